"""Throughput of one ensemble-KD training step: bf16 autocast and channels-last, on and off.

The paper-scale configs (``experiments/*.yaml``) turn on ``runtime.bf16`` and
``runtime.channels_last`` for GPUs. This script measures what each switch buys on the machine at
hand, timing the same per-batch work as :class:`kd_ray.train.distill.DistillationRun`'s training
pass: the frozen teachers' forward passes under ``no_grad`` with their CAM hooks
(:func:`kd_ray.models.capture_attention`), the student's forward and backward, the
:func:`kd_ray.losses.distillation_loss`, the finite-loss check, an SGD step and the streaming
metrics (:class:`kd_ray.metrics.SplitMetrics`, attention IoU included). Batches are random tensors
already on the device, so data loading is left out: it is measured by the loader, not the GPU.

    python benchmarks/kd_throughput.py                          # 224 px, batch 128, on cuda if any
    python benchmarks/kd_throughput.py --size 64 --batch 8 --steps 3 --warmup 1   # a quick CPU run
    python benchmarks/kd_throughput.py --json results/kd_throughput.json
    python benchmarks/kd_throughput.py --configs fp32,bf16+cl --markdown out.md   # two rows only

Every configuration builds fresh models from the same seed, warms up (cuDNN autotuning, lazy
allocations), then times ``--steps`` steps between two device synchronisations. The ``ratio``
column is each row's images/s over the ``fp32`` row's (always measured, first). "fp32" means
PyTorch's defaults on the device: on CUDA cuDNN may run fp32 convolutions in TF32, and the header
line says whether it does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from kd_ray.losses import LOSSES
from kd_ray.metrics import SplitMetrics
from kd_ray.models import capture_attention, create_model
from kd_ray.train.runtime import Runtime

# --configs names: (bf16 autocast, channels-last), in the table's default order.
CONFIGS: dict[str, tuple[bool, bool]] = {
    "fp32": (False, False),
    "cl": (False, True),
    "bf16": (True, False),
    "bf16+cl": (True, True),
}


@dataclass(frozen=True)
class Result:
    """One row of the table: a switch setting and its measured throughput."""

    device: str
    size: int
    batch: int
    amp: bool
    channels_last: bool
    images_per_s: float
    ratio: float
    peak_mem_gib: float | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (paper: 224)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (paper: 128)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--teachers", type=int, default=2, help="number of frozen teachers k")
    parser.add_argument("--teacher-arch", default="resnet50")
    parser.add_argument("--student-arch", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=100, help="100 for CIFAR-100")
    parser.add_argument("--loss", default="kd", choices=["kd", "zscore_kd"])
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    parser.add_argument("--no-metrics", action="store_true", help="leave out the metric updates")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated settings to time, from {', '.join(CONFIGS)} (default: all); "
        "fp32, the ratio's baseline, is always timed first",
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write a Markdown section (command, machine, table)"
    )
    args = parser.parse_args(argv)
    if min(args.size, args.batch, args.steps, args.teachers) < 1 or args.warmup < 0:
        parser.error("--size, --batch, --steps and --teachers must be positive, --warmup >= 0")
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        parser.error(
            f"--configs: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(CONFIGS)}"
        )
    args.configs = ["fp32", *dict.fromkeys(c for c in names if c != "fp32")]
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _models(args: argparse.Namespace, runtime: Runtime) -> tuple[list[nn.Module], nn.Module]:
    """Frozen teachers and a trainable student, as DistillationRun prepares them."""
    torch.manual_seed(0)
    make = {"num_classes": args.num_classes, "image_size": args.size}
    teachers = [
        runtime.to_device(create_model(args.teacher_arch, **make)).eval().requires_grad_(False)
        for _ in range(args.teachers)
    ]
    student = runtime.to_device(create_model(args.student_arch, **make)).train()
    return teachers, student


def measure(
    args: argparse.Namespace, device: torch.device, amp: bool, channels_last: bool
) -> tuple[float, float | None]:
    """Images per second of the KD training step, and the peak CUDA memory in GiB (None on CPU)."""
    # Runtime's constructor, unlike from_config, allows bf16 on CPU, so the cost shows there too.
    runtime = Runtime(device, bf16=amp, channels_last=channels_last)
    teachers, student = _models(args, runtime)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    loss_fn = LOSSES.get(args.loss)(temperature=10.0, alpha=0.2)
    generator = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    y_cpu = torch.randint(0, args.num_classes, (args.batch,), generator=generator)
    if device.type == "cuda":  # the loaders pin memory on GPUs (runtime.pin_memory)
        x_cpu, y_cpu = x_cpu.pin_memory(), y_cpu.pin_memory()
    metrics = SplitMetrics(args.num_classes, args.teachers, map_size=(args.size, args.size))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with contextlib.ExitStack() as hooks:
        s_cap = hooks.enter_context(capture_attention(student))
        t_caps = [hooks.enter_context(capture_attention(t)) for t in teachers]

        def step() -> None:
            x, y = runtime.batch(x_cpu, y_cpu)
            t_logits, t_maps = [], []
            with torch.no_grad(), runtime.autocast():
                for teacher, cap in zip(teachers, t_caps, strict=True):
                    logits = teacher(x).float()
                    t_logits.append(logits)
                    t_maps.append(cap.maps(logits, y))
            with runtime.autocast():
                s_logits = student(x).float()
            loss = loss_fn(s_logits, t_logits, y)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss became {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not args.no_metrics:
                with torch.no_grad():
                    metrics.update(
                        s_logits.detach(),
                        t_logits,
                        y,
                        student_maps=s_cap.maps(s_logits, y),
                        teacher_maps=t_maps,
                        loss=loss.detach(),
                    )

        for _ in range(args.warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return args.steps * args.batch / elapsed, peak


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def resolve_device(args: argparse.Namespace) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def precision_note(device: torch.device) -> str:
    """Whether "fp32" means IEEE fp32 or TF32 for convolutions and matmuls on this device."""
    if device.type != "cuda":
        return "fp32 is IEEE fp32"
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):  # torch >= 2.9
            conv, mm = cudnn.conv.fp32_precision, matmul.fp32_precision
            conv_tf32 = conv == "tf32" or (conv == "none" and cudnn.allow_tf32)
            mm_tf32 = mm == "tf32" or (mm == "none" and matmul.allow_tf32)
        else:
            conv_tf32, mm_tf32 = cudnn.allow_tf32, matmul.allow_tf32
    except RuntimeError:  # legacy and new TF32 flags were mixed by someone
        return "TF32 settings unreadable"
    return f"fp32 convolutions in {'TF32' if conv_tf32 else 'IEEE fp32'}, matmuls in {'TF32' if mm_tf32 else 'IEEE fp32'}"


def run(args: argparse.Namespace) -> list[Result]:
    device = resolve_device(args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if args.threads:
        torch.set_num_threads(args.threads)
    name = device_name(device)
    rows: list[Result] = []
    baseline = None
    for amp, channels_last in (CONFIGS[c] for c in args.configs):
        images_per_s, peak = measure(args, device, amp, channels_last)
        baseline = baseline or images_per_s
        rows.append(
            Result(
                name, args.size, args.batch, amp, channels_last, images_per_s, images_per_s / baseline, peak
            )
        )
    return rows


def format_table(rows: list[Result]) -> str:
    header = ("device", "size", "batch", "amp", "channels_last", "images/s", "ratio", "peak GiB")
    body = [
        (
            r.device,
            str(r.size),
            str(r.batch),
            "bf16" if r.amp else "off",
            "on" if r.channels_last else "off",
            f"{r.images_per_s:.1f}",
            f"{r.ratio:.2f}",
            "-" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[Result], args: argparse.Namespace, header: str, argv: list[str]) -> str:
    """A section for benchmarks/RESULTS.md: what ran, on what, and the table."""
    command = " ".join(["python benchmarks/kd_throughput.py", *argv])
    lines = [
        "### KD step throughput (benchmarks/kd_throughput.py)",
        "",
        f"- command: `{command}`",
        f"- machine: {rows[0].device}; torch {torch.__version__}, CUDA {torch.version.cuda or '-'}; "
        f"{platform.python_implementation()} {platform.python_version()}",
        f"- {header}",
        "",
        "| amp | channels_last | images/s | ratio to fp32 | peak GiB |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        peak = "-" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.2f}"
        lines.append(
            f"| {'bf16' if r.amp else 'off'} | {'on' if r.channels_last else 'off'} | "
            f"{r.images_per_s:.1f} | {r.ratio:.2f} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = resolve_device(args)
    header = (
        f"KD step: {args.teachers} x {args.teacher_arch} (frozen, CAM hooks) -> {args.student_arch}, "
        f"loss {args.loss}, {args.size} px, batch {args.batch}, {args.steps} timed steps after "
        f"{args.warmup} warm-up; {precision_note(device)}; torch {torch.__version__}"
    )
    print(header)
    rows = run(args)
    print(format_table(rows))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_markdown(rows, args, header, argv))
        print(f"wrote {args.markdown}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {"args": meta, "torch": torch.__version__, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

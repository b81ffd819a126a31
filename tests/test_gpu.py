"""The GPU path: bf16 autocast, channels-last, attention hooks, torch.compile, pinned loaders, NCCL.

Every numeric check is one test function parametrised by device. The ``cpu`` variants run in the
normal suite on tiny models and small images (a few seconds together); the ``cuda`` variants are
marked ``gpu`` and run the paper's models at GPU sizes under ``pytest -m gpu`` (what
``benchmarks/gpu_check.sh`` runs on a lent GPU machine); without CUDA they skip, saying why.
The sweep through Ray Train (``gpus_per_worker: 1``, NCCL) exists only as a ``gpu`` test: its CPU
counterparts are ``test_sweep_e2e.py`` and ``test_resume.py``.

Tolerances, and why (measured values are from the CPU variants on this project's CI machine):

* **fp32 references are true fp32.** On CUDA, PyTorch lets cuDNN convolutions use TF32 (10-bit
  mantissa) by default; every reference pass here runs with TF32 off, so the comparisons measure
  the switch under test, not TF32.
* **bf16 autocast** keeps 8 mantissa bits (unit roundoff 2^-8 = 0.4%), and the error grows with
  depth. One KD step must give a finite loss within 2% of fp32 (measured: 0.003% with GroupNorm
  CNNs, 0.06% with a ResNet18 student), student logits within 10% of the fp32 logits' largest
  magnitude (measured 0.6% and 2.6%), and a gradient whose cosine with fp32's is at least 0.9
  (measured 0.99997 with GroupNorm CNNs; 0.95-0.97 for a randomly initialised ResNet18 with
  batch-statistics BatchNorm, whose backward amplifies rounding in the small KD gradient).
* **channels-last** changes only the order of the sums inside convolutions: fp32 outputs agree to
  1e-3 relative (measured 1e-6 on ResNet18), and train-mode gradients to 1e-3 in relative norm
  (measured 2e-7 for a GroupNorm CNN, 1e-4 for ResNet18 at 32 px, batch 4, 5e-6 at 64 px, batch 8:
  batch-statistics BatchNorm over few values amplifies the reordered sums).
* **Attention maps under bf16** are compared as docs/metrics.md#attention-iou compares them: each
  map min-max normalised and binarised at the sweep's default threshold (0.4). The mean IoU of bf16
  against fp32 masks must be at least 0.85, and the mean absolute difference of the normalised maps
  at most 0.05 (measured on CPU: IoU 0.99-1.0 and 0.004-0.007 for ResNet18/ResNet50 CAMs and for
  vit_tiny and ViT-B/16 CLS attention at 224 px). Only pixels near the threshold can flip, so the
  IoU is the robust figure; CAMs use ``cam_target="label"`` so that a near-tie between two
  random-init logits cannot switch the class whose map is compared. Maps from a pass under autocast
  must also be float32 and, for ViTs, equal (1e-4) to fp32 attention weights of the same inputs: a
  strict expected failure until kd_ray's ViT hook stops running under the caller's autocast.
* **Checkpoint round trip** on the device: the resumed run's next epoch equals the uninterrupted
  one to 1e-4 relative (cuDNN deterministic; float atomics in the metric sums may reorder).
* **torch.compile** with the hooks must give the eager model's maps, logits and gradients over
  several fresh ``capture_attention`` contexts (the loop enters one per pass): exact up to 1e-5 with
  CPU's ``aot_eager`` backend (same kernels), 1e-3 relative with inductor's fused kernels on CUDA.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kd_ray.config import parse_config
from kd_ray.data import DATASETS
from kd_ray.data.streams import build_loaders
from kd_ray.losses import LOSSES
from kd_ray.metrics import functional as fn
from kd_ray.models import capture_attention, create_model
from kd_ray.plan import plan_sweep
from kd_ray.train.checkpoint import load_file, save_file
from kd_ray.train.distill import DistillationRun
from kd_ray.train.runtime import Runtime, sum_across_workers
from kd_ray.train.teacher import TeacherRun

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA,
    reason="CUDA is not available (torch.cuda.is_available() is False); the gpu variants run on a "
    "GPU machine: bash benchmarks/gpu_check.sh",
)
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, needs_cuda]),
]

IOU_THRESHOLD = 0.4  # MetricsConfig.iou_threshold's default


@dataclass(frozen=True)
class Scale:
    """Models and sizes of one device's variants: tiny on CPU, the paper's models on CUDA."""

    teacher: str
    student: str
    side: int
    batch: int
    cam: tuple[str, int, int]  # arch, image side, batch
    vit: tuple[str, int, int]


SCALES = {
    "cpu": Scale("cnn_small", "cnn_tiny", 16, 8, ("resnet18", 64, 4), ("vit_tiny", 32, 8)),
    "cuda": Scale("resnet50", "resnet18", 64, 32, ("resnet50", 224, 8), ("vit_b_16", 224, 4)),
}


@contextlib.contextmanager
def true_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions without TF32 on CUDA (no-op for CPU arithmetic).

    Through the legacy flags, which every torch version has and which set cuDNN's convolution and
    RNN precision together: mixing them with torch >= 2.9's ``fp32_precision`` makes later reads
    of ``torch.backends.cudnn.allow_tf32`` (by inductor, say) raise."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    old = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = old


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _blob_images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Noise plus one bright Gaussian blob per image, so attention maps have a structure to keep."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    images = 0.3 * torch.randn(n, 3, side, side, generator=g)
    for i in range(n):
        cy, cx = torch.randint(side // 4, 3 * side // 4, (2,), generator=g).tolist()
        images[i] += 2.0 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2).float() / (2 * (side / 8) ** 2))
    return images


# --- bf16 autocast -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_kd_step_under_bf16_is_finite_and_close_to_fp32(device: str) -> None:
    """One ensemble-KD step (k = 2 frozen teachers, train-mode student) with and without bf16."""
    scale, dev = SCALES[device], torch.device(device)
    torch.manual_seed(0)
    make = {"num_classes": 10, "image_size": scale.side}
    teachers = [create_model(scale.teacher, **make).to(dev).eval().requires_grad_(False) for _ in range(2)]
    student = create_model(scale.student, **make).to(dev).train()
    x = torch.randn(scale.batch, 3, scale.side, scale.side).to(dev)
    y = torch.randint(0, 10, (scale.batch,)).to(dev)
    results = {}
    with true_fp32():
        for bf16 in (False, True):
            runtime = Runtime(dev, bf16=bf16)  # the constructor allows bf16 on CPU too
            model = copy.deepcopy(student)
            with torch.no_grad(), runtime.autocast():
                t_logits = [t(x).float() for t in teachers]
            with runtime.autocast():
                s_logits = model(x).float()
            loss = LOSSES.get("kd")(temperature=10.0, alpha=0.2)(s_logits, t_logits, y)
            loss.backward()
            results[bf16] = loss.item(), s_logits.detach(), _grads(model)
    (loss32, logits32, grad32), (loss16, logits16, grad16) = results[False], results[True]
    assert math.isfinite(loss16) and torch.isfinite(grad16).all()
    assert abs(loss16 - loss32) <= 0.02 * abs(loss32), (loss16, loss32)
    assert (logits16 - logits32).abs().max() <= 0.1 * logits32.abs().max()
    assert _cos(grad16, grad32) >= 0.9


# --- channels-last -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_equal_outputs_and_gradients(device: str) -> None:
    dev = torch.device(device)
    # Batch-statistics BatchNorm over a 1x1 last stage amplifies rounding: keep >= 4 images there.
    archs = [("cnn_small", 16, 4), ("resnet18", 32, 4)] if device == "cpu" else [("resnet50", 64, 16)]
    for arch, side, batch in archs:
        torch.manual_seed(0)
        model = create_model(arch, num_classes=10).to(dev)
        x = torch.randn(batch, 3, side, side).to(dev)
        y = torch.randint(0, 10, (batch,)).to(dev)
        out = {}
        with true_fp32():
            for channels_last in (False, True):
                runtime = Runtime(dev, channels_last=channels_last)
                m = runtime.to_device(copy.deepcopy(model))
                xb, yb = runtime.batch(x, y)
                assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last
                m.eval()
                with torch.no_grad():
                    logits = m(xb)
                m.train()
                F.cross_entropy(m(xb), yb).backward()
                out[channels_last] = logits, _grads(m)
        (ref, g_ref), (got, g_got) = out[False], out[True]
        scale = ref.abs().max().item()
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * scale, msg=arch)
        assert ((g_got - g_ref).norm() / g_ref.norm()).item() <= 1e-3, arch


# --- attention maps under bf16 -------------------------------------------------------------------


def _maps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    with capture_attention(model, cam_target="label") as capture, torch.no_grad(), runtime.autocast():
        logits = model(x).float()
    return capture.maps(logits, y)


def _normalised(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


@pytest.mark.parametrize("kind", ["cam", "vit"])
@pytest.mark.parametrize("device", DEVICES)
def test_attention_maps_under_bf16_match_fp32(device: str, kind: str) -> None:
    dev = torch.device(device)
    arch, side, batch = getattr(SCALES[device], kind)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, image_size=side).to(dev).eval()
    x, y = _blob_images(batch, side).to(dev), (torch.arange(batch) % 10).to(dev)
    with true_fp32():
        ref = _maps(model, x, y, Runtime(dev))
        got = _maps(model, x, y, Runtime(dev, bf16=True))
    assert got.shape == ref.shape and torch.isfinite(got).all()
    got = got.float()  # see test_attention_maps_are_float32_under_autocast for the vit dtype
    iou = fn.iou_per_image(fn.binarize_maps(ref, IOU_THRESHOLD), fn.binarize_maps(got, IOU_THRESHOLD))
    assert iou.mean().item() >= 0.85, iou.tolist()
    assert (_normalised(got) - _normalised(ref)).abs().mean().item() <= 0.05


@pytest.mark.parametrize("kind", ["cam", "vit"])
@pytest.mark.parametrize("device", DEVICES)
def test_attention_maps_are_float32_under_autocast(device: str, kind: str) -> None:
    """``capture.maps`` promises detached float32 maps, also from a pass under bf16 autocast; for
    ViTs, the numbers ``need_weights=True`` would give in fp32 from the same attention inputs."""
    dev = torch.device(device)
    arch, side, _ = getattr(SCALES["cpu"], kind)  # dtype and arithmetic only: the small models
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, image_size=side).to(dev).eval()
    x, y = _blob_images(2, side).to(dev), torch.arange(2).to(dev)
    inputs = []
    if kind == "vit":
        attention = model.encoder.layers[-1].self_attention
        handle = attention.register_forward_pre_hook(
            lambda m, args: inputs.append([a.detach() for a in args])
        )
    with true_fp32():
        maps = _maps(model, x, y, Runtime(dev, bf16=True))
        assert maps.dtype == torch.float32
        if kind == "vit":
            handle.remove()
            q, k, v = (a.float() for a in inputs[-1])
            with torch.autocast(device_type=dev.type, enabled=False), torch.no_grad():
                _, weights = attention(q, k, v, need_weights=True, average_attn_weights=True)
            side_ = math.isqrt(weights.shape[-1] - 1)
            expected = weights[:, 0, 1:].reshape(-1, side_, side_)
            torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


# --- loaders: workers and pinned memory ----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_loader_workers_and_pinned_memory_deliver_the_same_bytes(device: str) -> None:
    """Workers (and, on CUDA, pinned host memory + a non_blocking copy) change speed, never bytes."""
    dev = torch.device(device)
    cfg = parse_config({"name": "pin", "datasets": [{"name": "synthetic", "num_train": 48, "num_val": 16}]})
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    kwargs = {"student_aug": "s", "global_batch_size": 16, "stream_seed": 7}
    plain = build_loaders(datasets, **kwargs)
    fast = build_loaders(datasets, **kwargs, loader_workers=2, pin_memory=device == "cuda")
    runtime = Runtime(dev, channels_last=True)
    for loaders in (plain, fast):
        loaders.set_epoch(2)
    n = 0
    for (x0, y0), (x1, y1) in zip(plain.train, fast.train, strict=True):
        assert x1.is_pinned() == (device == "cuda")
        xd, yd = runtime.batch(x1, y1)  # non_blocking copy
        if device == "cuda":
            torch.cuda.synchronize()
            assert xd.is_cuda and yd.is_cuda
        assert torch.equal(xd.cpu(), x0) and torch.equal(yd.cpu(), y0)
        n += 1
    assert n == 3


# --- the real loops on the device ----------------------------------------------------------------


def _loop_config(device: str) -> dict:
    return {
        "name": "gpu_loop",
        # image_size 24 > the native 16: the loop resizes every batch on the device
        "datasets": [{"name": "synthetic", "num_train": 32, "num_val": 16, "image_size": 24}],
        "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
        "student": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
        "grid": {"teacher_counts": [1], "losses": ["kd"], "permutations": ["T1w_Sw"]},
        "runtime": {"bf16": True, "channels_last": True, "loader_workers": 2, "pin_memory": device == "cuda"},
    }


def _close(a: dict, b: dict) -> bool:
    for key in a.keys() | b.keys():
        if key == "seconds":
            continue
        x, y = a[key], b[key]
        if not (math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6) or (math.isnan(x) and math.isnan(y))):
            return False
    return True


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_and_distillation_epochs_with_every_gpu_switch(device: str) -> None:
    """TeacherRun and DistillationRun under bf16 + channels-last + loader workers (+ pinned memory
    and the device-side resize), then a checkpoint round trip through a file that continues as
    the uninterrupted run does."""
    dev = torch.device(device)
    cfg = parse_config(_loop_config(device))
    runtime = Runtime(dev, bf16=True, channels_last=True)
    plan = plan_sweep(cfg)
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    teachers = {}
    for spec in plan.teachers:
        run = TeacherRun(cfg, spec, datasets, runtime)
        report = run.run_epoch(1)
        assert math.isfinite(report["train/loss"]) and 0 <= report["val/acc"] <= 1
        teachers[spec.teacher_id] = run.model
    [trial] = plan.trials
    tid = trial.trial_id
    deterministic = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    try:
        run = DistillationRun(cfg, [trial], datasets, teachers, runtime)
        assert all(p.device.type == device for p in run.students[0].model.parameters())
        first = run.run_epoch(1).reports[tid]
        assert math.isfinite(first["train/loss"]) and math.isfinite(first["val/iou_student"])
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"kd_gpu_state_{os.getpid()}_{device}.pt"
        try:
            save_file(run.state_dict(), str(path))
            state = load_file(str(path))  # map_location="cpu", weights_only=True
        finally:
            path.unlink(missing_ok=True)
        resumed = DistillationRun(cfg, [trial], datasets, teachers, runtime)
        resumed.load_state_dict(state)
        for p, q in zip(
            run.students[0].model.parameters(), resumed.students[0].model.parameters(), strict=True
        ):
            assert q.device.type == device and torch.equal(p, q)
        assert _close(resumed.run_epoch(2).reports[tid], run.run_epoch(2).reports[tid])
    finally:
        torch.backends.cudnn.deterministic = deterministic


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_sums_reduce_under_the_backend_ray_train_opens(device: str, tmp_path: Path) -> None:
    """Ray Train opens a process group for every Train run, one worker included: NCCL when the
    workers have GPUs, gloo otherwise. TeacherRun's epoch sums (host float64 tensors) go through
    ``sum_across_workers`` under it; NCCL reduces CUDA tensors only."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sums = sum_across_workers(torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64))
        assert sums.cpu().tolist() == [3.0, 1.0, 4.0]
    finally:
        dist.destroy_process_group()


# --- a sweep through Ray Train on the GPU --------------------------------------------------------

# Loaded by every Python process of the sweep (driver, Ray workers) through PYTHONPATH: records
# each torch.distributed process group the Train workers open (backend, world size, CUDA device),
# then hands over to any sitecustomize it shadows.
_PROBE = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, importlib.util, os, sys

    _HERE = os.path.dirname(os.path.abspath(__file__))


    def _record(dist):
        original = dist.init_process_group

        def init_process_group(*args, **kwargs):
            out = original(*args, **kwargs)
            import torch

            cuda = torch.cuda.is_available()
            line = (f"pid={os.getpid()} backend={dist.get_backend()} world_size={dist.get_world_size()} "
                    f"cuda={cuda} device={torch.cuda.current_device() if cuda else -1}\\n")
            with open(os.environ["KD_RAY_PROBE_FILE"], "a") as f:
                f.write(line)
            return out

        dist.init_process_group = init_process_group


    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "torch.distributed":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _record(module)

            spec.loader.exec_module = exec_module
            return spec


    if os.environ.get("KD_RAY_PROBE_FILE"):
        sys.meta_path.insert(0, _Finder())

    _rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
    if _spec is not None and _spec.loader is not None:
        _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
    """
)


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_two_epoch_sweep_on_cuda_through_ray_train_with_nccl_and_resume(tmp_path) -> None:
    """``kd-ray sweep`` (the real CLI, a subprocess) with ``gpus_per_worker: 1`` and every GPU
    switch on: one teacher, one stream group of two students, two epochs; then the same command
    with ``--resume`` reuses everything. Ray Train opens an NCCL process group for GPU workers
    (ray.train.torch.config: GPU in the resources → backend "nccl"); the probe records it."""
    from _sweep_helpers import cli_env, owner_files, ray_tmpdir, run_cli, table, write_config

    config = write_config(
        tmp_path,
        {
            "name": "gpu_tiny",
            "datasets": [{"name": "synthetic", "num_train": 64, "num_val": 32, "image_size": 32}],
            "student": {"train": {"epochs": 2}},
            "grid": {"losses": ["kd", "zscore_kd"], "permutations": ["T1w_Sw"]},
            "resources": {"gpus_per_worker": 1, "cpus_per_worker": 1},
            "runtime": {"bf16": True, "channels_last": True, "pin_memory": True, "loader_workers": 2},
        },
    )
    probe_dir, probe_file = tmp_path / "probe", tmp_path / "process_groups.txt"
    probe_dir.mkdir()
    (probe_dir / "sitecustomize.py").write_text(_PROBE)
    results = tmp_path / "results"
    python_path = os.pathsep.join(filter(None, [str(probe_dir), os.environ.get("PYTHONPATH")]))

    def sweep(*extra: str):
        ray_tmp = ray_tmpdir()
        env = cli_env(ray_tmp, PYTHONPATH=python_path, KD_RAY_PROBE_FILE=str(probe_file))
        done = run_cli(
            "sweep", str(config), "--results", str(results), "--no-report", *extra, timeout=240, env=env
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        return done.stdout

    sweep()
    sweep_dir = results / "gpu_tiny"
    trials, epochs = table(sweep_dir, "trials"), table(sweep_dir, "epochs")
    assert len(trials) == 2 and (trials["status"] == "ok").all()
    assert len(epochs) == 2 * 2 * 3  # trials x epochs x splits
    assert epochs[["loss", "acc", "kl", "iou_student"]].notna().all().all()
    groups = probe_file.read_text().splitlines()
    assert len(groups) == 2, groups  # the teacher's Train run and the stream group's
    assert all("backend=nccl" in g and "cuda=True" in g for g in groups), groups

    kept = owner_files(sweep_dir, "trials")
    stdout = sweep("--resume")
    assert "(2 already finished)" in stdout and "teachers trained 0, reused 1" in stdout, stdout
    assert owner_files(sweep_dir, "trials") == kept


# --- torch.compile with the attention hooks (last: on CUDA, inductor compiles for tens of seconds) ---


@pytest.mark.parametrize("arch", ["cnn_small", "vit_tiny"])
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_model_gives_the_eager_maps_through_fresh_hook_contexts(device: str, arch: str) -> None:
    """What DistillationRun does with ``runtime.compile``: the model is compiled once, and each pass
    enters a new ``capture_attention`` on it (hooks on the original modules, found through
    ``_orig_mod``). Every pass must see its own hooks: maps, logits and gradients equal eager's."""
    dev, side = torch.device(device), 16
    torch.manual_seed(0)
    eager = create_model(arch, num_classes=5, image_size=side).to(dev)
    base = copy.deepcopy(eager)
    if device == "cuda":
        compiled = Runtime(dev, compile=True).compiled(base)  # inductor, as in the real loop
        rtol = 1e-3
    else:  # same graph capture and autograd tracing, eager kernels: seconds instead of minutes
        compiled = torch.compile(base, backend="aot_eager")
        rtol = 1e-5
    for step in range(3):
        x = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(step)).to(dev)
        y = torch.arange(4).to(dev) % 5
        got = {}
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.train(step != 1)  # a train, an eval and a train pass, as an epoch's passes switch
            with capture_attention(model, cam_target="label") as capture:
                logits = model(x)
            maps = capture.maps(logits, y)
            grad = None
            if step != 1:
                model.zero_grad(set_to_none=True)
                F.cross_entropy(logits, y).backward()
                grad = _grads(model)
            got[name] = logits.detach(), maps, grad
        (l_ref, m_ref, g_ref), (l_got, m_got, g_got) = got["eager"], got["compiled"]
        torch.testing.assert_close(l_got, l_ref, rtol=rtol, atol=rtol * l_ref.abs().max().item())
        torch.testing.assert_close(m_got, m_ref, rtol=rtol, atol=rtol * m_ref.abs().max().item())
        if g_ref is not None:
            assert ((g_got - g_ref).norm() / g_ref.norm()).item() <= max(rtol, 1e-5)

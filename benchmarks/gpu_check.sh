#!/usr/bin/env bash
# The GPU proof (issue 10, item 7): one command, under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from any directory
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # where its files go (default benchmarks/gpu_out)
#   bash benchmarks/gpu_check.sh --bundle        # on a machine with a package registry: pack the
#                                                # Python packages a bare GPU image lacks (below)
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # list the steps and their limits only
#
# Steps, each under its own `timeout` (limits in seconds: 435 in all, plus an 8-s grace per step
# between SIGINT and SIGKILL, so even a run whose every step overran ends within 475 s < 8 min).
# A step that fails or times out is recorded and the next one still runs; the script exits 1 at
# the end if any step failed.
#
#   setup       25  find the Python: .venv if present (prepared or carried); else the machine's
#                   python3 when it already has CUDA torch (a GPU image), with the packages it
#                   lacks unpacked from .gpu_bundle/site.tar.xz; else build .venv from a registry
#                   (`python3 -m venv .venv && pip install torch==2.14.1 torchvision==0.29.1
#                   -e '.[test]'`, limit 600: only where no environment exists, outside the budget)
#   env         20  nvidia-smi, Python, torch, CUDA, cuDNN, NCCL and package versions -> env.txt
#   pytest_gpu 280  pytest -m gpu on the modules that have gpu tests (150 s per test at most):
#                   JUnit XML and per-test times
#   throughput 100  benchmarks/kd_throughput.py at 224 px, batch 128, k = 2 ResNet50 teachers ->
#                   ResNet18 student, fp32 and bf16 + channels-last: images/s, peak memory, ratio
#   summary     10  summary.md from the above, ready to paste into benchmarks/RESULTS.md
#
# Files under $OUT (7; the device tool returns at most 8): gpu_check.log (everything printed),
# env.txt, steps.tsv (name, exit code, seconds, limit), pytest_junit.xml, throughput.json,
# throughput.md, summary.md.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SELF")/.." && pwd)"
cd "$REPO"
KILL_GRACE=8  # seconds between a step's SIGINT at its limit and SIGKILL

# >>> helpers: run by the steps below (each under its step's timeout) or by --bundle, not directly

# Packages kd_ray needs (for the gpu tests and `kd-ray sweep --no-report`) that the lent GPU
# machine's image lacks (/work/.library/device/KINDS.md lists what it has), with their own needs.
BUNDLE_PACKAGES=(ray pydantic pydantic_core annotated-types typing-inspection typing_extensions
  jsonschema jsonschema-specifications referencing rpds-py tensorboardX)
# Parts of the ray wheel a local, dashboard-less Ray Train/Tune run never loads (Java, RLlib,
# Serve, the dashboard's web client): dropping them takes the bundle under the device tool's 64 MiB.
BUNDLE_DROP=(ray/jars ray/rllib ray/serve ray/dashboard/client ray/tests)

bundle() {
  local py=${PYTHON:-.venv/bin/python} target=${GPU_PY_VERSION:-3.12} work
  [[ -x $py ]] || py=python3
  work=$(mktemp -d)
  local specs=()
  for p in "${BUNDLE_PACKAGES[@]}"; do  # the versions this checkout is tested with
    specs+=("$p==$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")")
  done
  echo "downloading for CPython $target, manylinux x86_64: ${specs[*]}"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$target" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$work/wheels" "${specs[@]}"
  "$py" - "$work/wheels" "$work/site" "${BUNDLE_DROP[@]}" <<'EOF'
import shutil, sys, zipfile
from pathlib import Path
wheels, site, drop = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, site)
            mode = info.external_attr >> 16
            if mode:
                Path(path).chmod(mode & 0o777)
for part in drop:
    shutil.rmtree(site / part, ignore_errors=True)
EOF
  mkdir -p .gpu_bundle
  tar -C "$work/site" -cf - . | xz -T0 -6 > .gpu_bundle/site.tar.xz
  rm -rf "$work"
  grep -qxF '/.gpu_bundle/' .git/info/exclude 2>/dev/null || echo '/.gpu_bundle/' >> .git/info/exclude
  echo "wrote .gpu_bundle/site.tar.xz ($(du -m .gpu_bundle/site.tar.xz | cut -f1) MiB; the device" \
    "tool carries at most 64 MiB with the repository): pass carry=[\".gpu_bundle\"]"
}

env_report() {  # print the machine and the versions, also to $OUT_DIR/env.txt
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm); $(nproc) CPUs"
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
      nvidia-smi || true
    else
      echo "nvidia-smi: not found"
    fi
    "$PY" - <<'EOF'
import importlib.metadata as m, platform, torch
print(f"python {platform.python_version()} ({platform.python_implementation()})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
cuda = torch.cuda.is_available()
print(f"cuda available: {cuda}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"capability {p.major}.{p.minor}; bf16 supported: {torch.cuda.is_bf16_supported()}")
    print(f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
for name in ("torchvision", "ray", "pydantic", "numpy", "pandas", "pyarrow", "pytest", "pytest-timeout"):
    try:
        print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name} MISSING")
import kd_ray
print(f"kd_ray from {kd_ray.__file__}")
if not cuda:
    raise SystemExit("no CUDA device: the gpu tests will skip and the throughput is a CPU figure")
EOF
  } 2>&1 | tee "$OUT_DIR/env.txt"
}

summary() {  # summary.md from steps.tsv, env.txt, the JUnit XML and throughput.md
  "$PY" - "$OUT_DIR" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
lines = ["## GPU check (benchmarks/gpu_check.sh)", ""]
env = (out / "env.txt").read_text().splitlines() if (out / "env.txt").exists() else []
keep = ("date:", "python ", "torch ", "device 0:", "NCCL ", "ray ", "cuda available")
lines += [f"- {l}" for l in env if l.startswith(keep)] + [""]
lines += ["| step | exit | seconds | limit s |", "|---|---:|---:|---:|"]
for row in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs, limit = row.split("\t")
    note = " (timed out)" if rc in ("124", "130", "137") else ""
    lines.append(f"| {name} | {rc}{note} | {secs} | {limit} |")
junit = out / "pytest_junit.xml"
lines += ["", "### pytest -m gpu", ""]
if junit.exists():
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    cases = [c for s in suites for c in s.iter("testcase")]
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    secs = sum(float(s.get("time", 0)) for s in suites)
    lines.append(f"{total['tests']} tests, {total['failures']} failed, {total['errors']} errors, "
                 f"{total['skipped']} skipped (xfail included), {secs:.1f} s")
    lines += ["", "| test | outcome | seconds |", "|---|---|---:|"]
    for c in sorted(cases, key=lambda c: -float(c.get("time", 0))):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            el = c.find(tag)
            if el is not None:
                msg = (el.get("message") or "").splitlines()[0][:80] if el.get("message") else ""
                outcome = f"{tag}: {msg}".replace("|", "/") if msg else tag
        lines.append(f"| {c.get('name')} | {outcome} | {float(c.get('time', 0)):.1f} |")
else:
    lines.append("no JUnit XML: the step did not get as far as writing it (see gpu_check.log)")
lines.append("")
tp = out / "throughput.md"
lines += tp.read_text().splitlines() if tp.exists() else ["### KD step throughput", "", "not measured (see gpu_check.log)"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print((out / "summary.md").read_text())
EOF
}

case "${1:-}" in
  --bundle) bundle; exit ;;
  --env) PY=$2 OUT_DIR=$3 env_report; exit ;;
  --summary) PY=$2 OUT_DIR=$3 summary; exit ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--bundle]" >&2; exit 2 ;;
esac

# <<< helpers

OUT_DIR="${OUT:-benchmarks/gpu_out}"
DRY=${GPU_CHECK_DRY_RUN:-}
FAILED=()
if [[ -z $DRY ]]; then
  mkdir -p "$OUT_DIR"
  OUT_DIR="$(cd "$OUT_DIR" && pwd)"
  : > "$OUT_DIR/steps.tsv"
  exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0

step() {  # step NAME LIMIT_S COMMAND...: COMMAND under `timeout`; its exit code is recorded, not fatal
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  if [[ -n $DRY ]]; then
    printf 'STEP\t%s\t%s\t%s\n' "$name" "$limit" "$*"
    return 0
  fi
  echo "=== [$name] limit ${limit}s: $*"
  timeout --signal=INT --kill-after="$KILL_GRACE" "$limit" "$@" || rc=$?
  local took=$((SECONDS - start))
  case $rc in
    0) echo "=== [$name] ok in ${took}s" ;;
    124 | 137) echo "=== [$name] TIMED OUT after ${took}s (limit ${limit}s)" ;;
    *) echo "=== [$name] FAILED with exit code $rc after ${took}s" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$took" "$limit" >> "$OUT_DIR/steps.tsv"
  ((rc == 0)) || FAILED+=("$name")
  return 0
}

# 1. setup: which Python. Only a missing environment is built; everything is found otherwise.
SITE="${TMPDIR:-/tmp}/kd_ray_gpu_site"
if [[ -x .venv/bin/python ]]; then
  PY="$REPO/.venv/bin/python"
  step setup 25 "$PY" -c "import torch, kd_ray"
elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # A GPU image: its python3 has CUDA torch. Add what it lacks, and kd_ray, on PYTHONPATH (Ray's
  # worker processes inherit it). A venv would not see that python's packages.
  PY="$(command -v python3)"
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  if [[ -f .gpu_bundle/site.tar.xz ]]; then
    step setup 25 bash -c "rm -rf '$SITE' && mkdir -p '$SITE' && tar -xJf .gpu_bundle/site.tar.xz -C '$SITE'"
  else
    step setup 25 "$PY" -c "import ray, pydantic, kd_ray"
  fi
else
  PY="$REPO/.venv/bin/python"
  step setup 600 bash -c "python3 -m venv .venv && .venv/bin/pip install torch==2.14.1 torchvision==0.29.1 -e '.[test]'"
fi

# 2. the machine
step env 20 bash "$SELF" --env "$PY" "$OUT_DIR"

# 3. the gpu tests, on the modules that have any (other modules may need packages a GPU image lacks)
mapfile -t GPU_MODULES < <(grep -l "mark.gpu" tests/test_*.py)
step pytest_gpu 280 "$PY" -m pytest -m gpu -q -p no:cacheprovider --timeout=150 --durations=0 \
  --junitxml="$OUT_DIR/pytest_junit.xml" "${GPU_MODULES[@]}"

# 4. the throughput of the paper's KD step
step throughput 100 "$PY" benchmarks/kd_throughput.py --size 224 --batch 128 --teachers 2 \
  --teacher-arch resnet50 --student-arch resnet18 --num-classes 100 --configs fp32,bf16+cl \
  --json "$OUT_DIR/throughput.json" --markdown "$OUT_DIR/throughput.md"

# 5. the summary
step summary 10 bash "$SELF" --summary "$PY" "$OUT_DIR"

if [[ -n $DRY ]]; then
  exit 0
fi
if ((${#FAILED[@]})); then
  echo "gpu_check: FAILED steps: ${FAILED[*]} (files in $OUT_DIR)"
  exit 1
fi
echo "gpu_check: all steps passed (files in $OUT_DIR)"

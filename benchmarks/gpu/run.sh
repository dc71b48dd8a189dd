#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (H100/H200 with CuPy, PyTorch and nvcc), < 8 minutes.
#
# Here, before the call: copy the compact CIFAR-10 archive and its rebuild tool into the
# git-ignored folder gpu-carry/ and carry it (the device tool's `carry`):
#     mkdir -p gpu-carry && cp ../shared/data/cifar10-jpeg.tar.gz ../shared/tools/cifar_from_jpeg.py gpu-carry/
# then run there:   MINIGNN_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu/run.sh
#
# It installs the project (no downloads: the machine's image has NumPy, Numba, CuPy, pytest,
# Hypothesis), rebuilds CIFAR-10, runs the GPU tests (the contract suite on `gpu`, CPU-vs-GPU
# agreement, a short training run against the CPU's losses), the GPU benchmark, and a one-epoch
# CIFAR-10 training run, and writes benchmarks/results/<date>-gpu/ (copied to $OUT when set):
# device.txt (date, commit, GPU, driver, CuPy), pytest.txt (summary line first), bench.txt,
# train.log. Each step has its own time limit and a failing step does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
RES="benchmarks/results/$(date -u +%Y-%m-%d)-gpu"
mkdir -p "$RES"
start=$(date +%s)
step() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$RES/steps.txt"; }

step "install"
$PY -m pip install --no-deps --no-build-isolation -q -e . > "$RES/install.log" 2>&1 || step "install failed (see install.log)"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${MINIGNN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  $PY -c "import cupy, numpy, numba; print('cupy', cupy.__version__, '| numpy', numpy.__version__, '| numba', numba.__version__)" 2>&1
  $PY -c "from minignn import backend; print('gpu_available:', backend.gpu_available(), backend.gpu_unavailable_reason())" 2>&1
} > "$RES/device.txt"
cat "$RES/device.txt"

DATA=""
if [ -f gpu-carry/cifar10-jpeg.tar.gz ]; then
  step "rebuild CIFAR-10"
  mkdir -p gpu-carry/data
  $PY gpu-carry/cifar_from_jpeg.py gpu-carry/cifar10-jpeg.tar.gz gpu-carry/data > "$RES/data.log" 2>&1 && DATA="$PWD/gpu-carry/data"
fi

step "GPU tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu -o addopts="" tests > "$RES/pytest.full.txt" 2>&1
rc=$?
{ tail -n 1 "$RES/pytest.full.txt"; echo "exit status $rc"; echo; grep -E "^(FAILED|ERROR)" "$RES/pytest.full.txt" | head -50; } > "$RES/pytest.txt"
cat "$RES/pytest.txt" | head -5

step "benchmark"
timeout 150 $PY -m minignn bench --device gpu maxent vgg > "$RES/bench.txt" 2>&1 || step "benchmark exit status $?"
cat "$RES/bench.txt"

if [ -n "$DATA" ]; then
  step "one CIFAR-10 epoch, VGG-11 GFGP on the GPU"
  timeout 150 $PY -m minignn train --device gpu --data-dir "$DATA" --model vgg11 --pool gfgp --epochs 1 \
      --batch-size 128 --no-progress --no-plots --out "gpu-carry/run" --overwrite > "$RES/train.log" 2>&1 \
      || step "training exit status $?"
  tail -n 5 "$RES/train.log"
fi
step "done"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/results" && cp -r "$RES" "$OUT/results/"; fi

#!/usr/bin/env bash
# GPU check: the CuPy and CUDA tests, then the GPU speed suite (quick), in one go, one log.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]          (or GCRF_WHEELS=WHEEL_DIR benchmarks/gpu_check.sh)
#
# Expects a machine with an NVIDIA GPU whose Python (PYTHON, default python3) already has
# CuPy, a CUDA build of PyTorch, NumPy and SciPy (TensorFlow optional: its GPU test runs where
# it is installed). Installs offline (pip --no-index) from the
# wheels in WHEEL_DIR whatever of these is missing:
#   array-api-compat, hypothesis (with attrs, sortedcontainers), pytest (with pluggy,
#   iniconfig, packaging), tqdm, threadpoolctl; setuptools >= 70.1 if the Python's is older,
# then this checkout itself with --no-deps (editable, so that lowrank_gcrf.adapters resolves).
# Runs from the repository root, every step under its own timeout (together 465 s < 8 min),
# and goes on to the next step when one fails. Writes one log, $OUT/gpu_check.log when OUT is
# set (else under TMPDIR), ending with each step's exit code; prints its path at the end.
# Exit code: 0 when every step passed, 1 otherwise.
set -u

cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
WHEELS=${1:-${GCRF_WHEELS:-}}
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    LOG="$OUT/gpu_check.log"
else
    LOG="$(mktemp "${TMPDIR:-/tmp}/gpu_check.XXXXXX.log")"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
: > "$LOG"
SUMMARY=()
FAILED=0

# step NAME SECONDS COMMAND...: run COMMAND under a timeout, log its output and exit code.
step() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc
    printf '\n===== %s (timeout %ss): %s\n' "$name" "$limit" "$*" >> "$LOG"
    timeout --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    [ "$rc" -eq 124 ] && echo "(timed out after ${limit}s)" >> "$LOG"
    printf -- '----- %s: exit %s after %ss\n' "$name" "$rc" "$((SECONDS - start))" >> "$LOG"
    SUMMARY+=("$(printf '%-16s exit %3s  %4ss' "$name" "$rc" "$((SECONDS - start))")")
    [ "$rc" -eq 0 ] || FAILED=1
    echo "$name: exit $rc"
}

# install_missing: pip-install from WHEEL_DIR each package whose module does not import.
install_missing() {
    local missing=() pair
    for pair in array_api_compat:array-api-compat hypothesis:hypothesis pytest:pytest \
        tqdm:tqdm threadpoolctl:threadpoolctl; do
        "$PY" -c "import ${pair%%:*}" 2> /dev/null || missing+=("${pair#*:}")
    done
    "$PY" -c "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" \
        2> /dev/null || missing+=("setuptools>=70.1")
    echo "missing: ${missing[*]:-nothing}"
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$WHEELS" ]; then
        echo "no wheel folder given (argument or GCRF_WHEELS)"
        return 1
    fi
    "$PY" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}"
}

# gpu_tests: the tests marked gpu (TensorFlow's where it is installed); on a GPU machine a
# skipped one is a failure, so the step fails (exit 3) when pytest skipped any.
gpu_tests() {
    local files=(tests/test_cupy.py tests/test_torch_adapter.py) rc
    "$PY" -c "import tensorflow" 2> /dev/null && files+=(tests/test_tensorflow_adapter.py)
    "$PY" -m pytest -p no:cacheprovider -q -rs -m gpu "${files[@]}" 2>&1 | tee "$WORK/pytest.out"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ] && grep -q "skipped" "$WORK/pytest.out"; then
        echo "GPU tests were skipped on a GPU machine (reasons above)"
        return 3
    fi
    return "$rc"
}
export -f install_missing gpu_tests
export PY WHEELS WORK

{
    echo "GPU check of $(git rev-parse --short HEAD 2> /dev/null || echo 'a checkout'), $(date -u)"
    echo "python: $PY; wheels: ${WHEELS:-none}"
} >> "$LOG"
step gpu 15 nvidia-smi
step python 40 "$PY" -c "import sys, numpy, scipy, cupy, torch
print(sys.version)
print('numpy', numpy.__version__, 'scipy', scipy.__version__, 'cupy', cupy.__version__)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
print('devices: cupy', cupy.cuda.runtime.getDeviceCount(), 'torch', torch.cuda.device_count())
assert torch.cuda.is_available(), 'torch has no CUDA'"
step wheels 60 bash -c install_missing
step project 60 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
step gpu-tests 140 bash -c gpu_tests
step speed-cuda 150 "$PY" -m benchmarks.speed --device cuda --quick --out "$WORK/speed"
for file in "$WORK/speed/RESULTS.md" "$WORK/speed/results/speed_cuda.json"; do
    [ -f "$file" ] && printf '\n===== %s\n%s\n' "${file#"$WORK"/}" "$(cat "$file")" >> "$LOG"
done
rm -rf "$WORK"

{
    echo
    echo "===== summary"
    printf '%s\n' "${SUMMARY[@]}"
    [ "$FAILED" -eq 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED"
} >> "$LOG"
echo "log: $LOG"
exit "$FAILED"

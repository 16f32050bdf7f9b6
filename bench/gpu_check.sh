#!/usr/bin/env bash
# The one prepared GPU check (issue 6), run from the repo root on the lent machine:
#
#   here:   bash bench/fetch_gpu_wheels.sh
#   device: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Phases (each timed): install the carried packages into /tmp/site; versions and imports; the CUDA
# builds of the parity models (tests/test_gpu.py) and of the benchmark model (bench/gpu_bench.py) in
# each of BENCH_SCHEMES (float16, 8- and 4-bit group quantization with float16 compute), side by
# side on the CPU cores; tests/test_gpu.py on the GPU; bench/gpu_bench.py on the GPU: parity and
# tokens/s of every scheme that built, interleaved with transformers float16.
# Logs and JSON go to $OUT (./build/gpu-check when unset): gpu_check.log, phases.json,
# parity_build.json, bench_build.json, test_gpu.xml, gpu_bench.json. Built artifacts go to $WORK
# (/tmp/gpu-check-work), not $OUT: only 8 files of 16 MiB come back.
#
#   --dry-run   everything that needs no GPU (install or wheel check, imports, all CUDA builds), then
#               stop before the first GPU use. PYTHON=.venv/bin/python uses that interpreter's own
#               packages instead of installing the carried ones (a dry run here, without Python 3.12).
# The whole run must stay under 8 minutes on the H200 machine; each phase has its own timeout
# (TIMEOUT_INSTALL/IMPORTS/BUILDS/TEST/BENCH seconds override them, e.g. for a dry run on 2 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

DRY_RUN=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
    esac
done

OUT=${OUT:-$REPO/build/gpu-check}
WORK=${WORK:-/tmp/gpu-check-work}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT" "$WORK"
: > "$OUT/gpu_check.log"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

START=$(date +%s.%N)
PHASES=()
FAILED=()
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
# phase NAME TIMEOUT_S COMMAND...: run, time, record; a failure is recorded and the run goes on.
phase() {
    local name=$1 limit=$2; shift 2
    local t0 rc
    echo
    echo "=== [$(elapsed "$START") s] phase $name (timeout ${limit} s)"
    t0=$(now)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local took; took=$(elapsed "$t0")
    echo "=== phase $name: rc $rc, $took s"
    PHASES+=("{\"phase\": \"$name\", \"rc\": $rc, \"seconds\": $took}")
    (( rc == 0 )) || FAILED+=("$name")
    return $rc
}
finish() {
    local total; total=$(elapsed "$START")
    echo
    echo "=== phase times:"
    printf '  %s\n' "${PHASES[@]}"
    echo "=== total $total s; failed phases: ${FAILED[*]:-none}"
    (( DRY_RUN )) && echo "=== DRY RUN: stopped before the first GPU use (nothing ran on a GPU)"
    local joined; joined=$(IFS=,; echo "${PHASES[*]}")
    echo "{\"dry_run\": $DRY_RUN, \"total_seconds\": $total, \"phases\": [${joined}], \"failed\": \"${FAILED[*]:-}\"}" > "$OUT/phases.json"
    (( ${#FAILED[@]} == 0 ))
    exit $?
}

echo "gpu_check $(date -u +%FT%TZ) dry_run=$DRY_RUN repo=$REPO OUT=$OUT WORK=$WORK"
echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi
if ! command -v nvcc > /dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH=/usr/local/cuda/bin:$PATH  # codegen's cuda target needs nvcc on PATH
fi
command -v nvcc > /dev/null && nvcc --version | tail -2 || echo "nvcc: not found"

# ---------------------------------------------------------------- packages
install_packages() {
    shopt -s nullglob
    local wheels=(.whl/*.whl) archives=(.whl/apache_tvm-*.tar.xz)
    local need=(apache_tvm_ffi- rpds_py- jsonschema- referencing- jsonschema_specifications- black- pytokens- platformdirs- pathspec- ruamel_yaml-)
    local missing=()
    for prefix in "${need[@]}"; do
        local found=(.whl/"$prefix"[0-9]*.whl)
        (( ${#found[@]} == 1 )) || missing+=("$prefix (${#found[@]} found)")
    done
    (( ${#archives[@]} == 1 )) || missing+=("apache_tvm-*.tar.xz (${#archives[@]} found)")
    echo "carried: ${#wheels[@]} wheels + ${#archives[@]} archive(s), $(du -cb .whl/* 2>/dev/null | awk 'END {printf "%.1f MiB", $1 / 1048576}')"
    if (( ${#missing[@]} )); then
        echo "ERROR: .whl lacks (or holds several of): ${missing[*]}; run bash bench/fetch_gpu_wheels.sh here and carry [\".whl\"]"
        return 1
    fi
    local pip=(python3 -m pip) site=$SITE extra=()
    if [[ -n ${PYTHON:-} ]]; then
        # Another interpreter: install for Python 3.12 manylinux into a scratch folder (pip checks the
        # wheels' tags as the device's pip would), unpack the TVM archive there too, then drop it.
        echo "PYTHON=$PYTHON: that interpreter's own packages are used; the carried ones are installed for cp312 into a scratch folder as a check"
        pip=("$PYTHON" -m pip) site=$WORK/site-check
        extra=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
               --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform any)
    fi
    rm -rf "$site"
    "${pip[@]}" install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" ${extra[@]+"${extra[@]}"} "${wheels[@]}" || return 1
    "${PYTHON:-python3}" - "$site" "${archives[0]}" <<'EOF' || return 1
import os, sys, tarfile, time
site, archive = sys.argv[1:]
started = time.perf_counter()
with tarfile.open(archive, "r:xz") as tar:
    tar.extractall(site, filter="data")
size = os.path.getsize(os.path.join(site, "tvm", "lib", "libtvm_compiler.so"))
print(f"unpacked {archive} into {site} in {time.perf_counter() - started:.1f} s (libtvm_compiler.so {size / 2**20:.0f} MiB)")
print("installed:", " ".join(sorted(n for n in os.listdir(site) if n.endswith(".dist-info"))))
EOF
    [[ -n ${PYTHON:-} ]] && rm -rf "$site"
    return 0
}

export PYTHON=${PYTHON:-}
PY=${PYTHON:-python3}
if [[ -n ${PYTHON:-} ]]; then
    export PYTHONPATH=$REPO
else
    export PYTHONPATH=$SITE:$REPO
fi
export -f install_packages
export SITE PYTHON WORK
phase install "${TIMEOUT_INSTALL:-120}" bash -c install_packages || finish

# ---------------------------------------------------------------- versions and imports
phase imports "${TIMEOUT_IMPORTS:-120}" "$PY" - <<'EOF' || finish
import importlib, json, platform, shutil, sys
import tvm, tvm_ffi
print(f"python {platform.python_version()} at {sys.executable}")
info = tvm.support.libinfo()
print(f"tvm {tvm.__version__} from {tvm.__file__}; USE_CUDA {info.get('USE_CUDA')}, USE_LLVM {info.get('USE_LLVM')}; tvm_ffi {tvm_ffi.__version__}")
from importlib import metadata
for module, dist in (("numpy", "numpy"), ("ml_dtypes", "ml-dtypes"), ("torch", "torch"), ("transformers", "transformers"),
                     ("safetensors", "safetensors"), ("tokenizers", "tokenizers"), ("jinja2", "jinja2"), ("yaml", "pyyaml"),
                     ("jsonschema", "jsonschema"), ("black", "black"), ("ruamel.yaml", "ruamel.yaml"), ("pytest", "pytest")):
    imported = importlib.import_module(module)
    print(f"  {dist} {metadata.version(dist)} from {imported.__file__}")
for name in ("codegen.build.compile", "codegen.runtime", "codegen.convert.weights", "codegen.render", "codegen.import_hf", "codegen.cli", "tests.test_gpu"):
    importlib.import_module(name)
print("codegen imports: ok; nvcc:", shutil.which("nvcc"))
import torch
print(f"torch.cuda.is_available() {torch.cuda.is_available()} (no CUDA context made here)")
EOF

# ---------------------------------------------------------------- CUDA builds (CPU only)
ARCH=sm_90  # the H200's; read from the driver without making a CUDA context where one is present
if command -v nvidia-smi > /dev/null; then
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    [[ $cap =~ ^[0-9]+$ ]] && ARCH=sm_$cap
fi
BENCH_SCHEMES=${BENCH_SCHEMES:-q0f16 q8f16_1 q4f16_1}  # a word list (bash cannot export arrays)
read -ra schemes <<< "$BENCH_SCHEMES"
CORES=$(nproc)
PARITY_JOBS=$(( CORES > ${#schemes[@]} + 1 ? CORES - ${#schemes[@]} - 1 : 1 ))
(( PARITY_JOBS > 8 )) && PARITY_JOBS=8
echo
echo "CUDA arch $ARCH; parity builds with $PARITY_JOBS jobs beside the benchmark model's builds ($BENCH_SCHEMES)"
build_all() {
    rm -rf "$WORK/parity" "$WORK/bench"
    "$PY" -m tests.test_gpu --build-only "$WORK/parity" --arch "$ARCH" --jobs "$PARITY_JOBS" > "$WORK/parity_build.log" 2>&1 &
    local parity=$! scheme pids=() rc_bench=0
    for scheme in $BENCH_SCHEMES; do  # one process per scheme: the compiles run side by side
        "$PY" bench/gpu_bench.py --build-only --schemes "$scheme" --arch "$ARCH" --workdir "$WORK/bench" \
            --json "$WORK/bench_build_$scheme.json" > "$WORK/bench_build_$scheme.log" 2>&1 &
        pids+=($!)
    done
    wait $parity; local rc_parity=$?
    for pid in "${pids[@]}"; do wait "$pid" || rc_bench=$?; done
    local noise='Fast mode segfaults|File "(Objects|Python|Modules|\./Include)/|in _start$|0xffffffffffffffff|^\s*$'
    echo "--- parity models (rc $rc_parity):"; grep -Ev "$noise" "$WORK/parity_build.log" | tail -60
    for scheme in $BENCH_SCHEMES; do
        echo "--- benchmark model $scheme:"; grep -Ev "$noise" "$WORK/bench_build_$scheme.log" | tail -12
    done
    [[ -f $WORK/parity/manifest.json ]] && cp "$WORK/parity/manifest.json" "$OUT/parity_build.json"
    # One file back for all schemes: a device call returns at most 8 files.
    "$PY" -c 'import json, sys; print(json.dumps({p: json.load(open(p)) for p in sys.argv[1:]}, indent=1))' \
        "$WORK"/bench_build_*.json > "$OUT/bench_build.json"
    (( rc_parity == 0 && rc_bench == 0 ))
}
export -f build_all
export PY WORK OUT ARCH PARITY_JOBS BENCH_SCHEMES
phase cuda_builds "${TIMEOUT_BUILDS:-300}" bash -c build_all

(( DRY_RUN )) && finish  # says that it stopped before the first GPU use

# ---------------------------------------------------------------- on the GPU
# A case whose build failed fails its own tests; the others still run, so one call tells the most.
if [[ -f $WORK/parity/manifest.json ]]; then
    phase test_gpu "${TIMEOUT_TEST:-180}" env GPU_TEST_BUILD_DIR="$WORK/parity" "$PY" -m pytest tests/test_gpu.py -v -s -rA \
        -p no:cacheprovider --junitxml="$OUT/test_gpu.xml" -W ignore::DeprecationWarning
else
    echo "=== test_gpu skipped: the parity builds left no manifest"; FAILED+=(test_gpu)
fi
# Every scheme whose build succeeded is measured; a missing one is a failure of its own.
BUILT=()
for scheme in $BENCH_SCHEMES; do
    if [[ -f $WORK/bench/artifact-$scheme/model.so ]]; then
        BUILT+=("$scheme")
    else
        echo "=== gpu_bench: the benchmark model did not build for $scheme"; FAILED+=("gpu_bench_build_$scheme")
    fi
done
if (( ${#BUILT[@]} )); then
    phase gpu_bench "${TIMEOUT_BENCH:-300}" "$PY" bench/gpu_bench.py --schemes "$(IFS=,; echo "${BUILT[*]}")" --arch "$ARCH" \
        --workdir "$WORK/bench" --reuse-artifact --json "$OUT/gpu_bench.json"
else
    echo "=== gpu_bench skipped: the benchmark model built for no scheme"; FAILED+=(gpu_bench)
fi
finish

#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), from anywhere: fills ./.whl with the Python 3.12 x86_64
# packages that the lent GPU machine lacks, for bench/gpu_check.sh (device call: carry [".whl"]).
#
# The device call carries at most 64 MiB (repo included). apache-tvm's wheel is 100.5 MB (its
# libtvm_compiler.so alone is 259 MB, deflated to 92 MB), so it travels repacked instead: the
# wheel's files, less CUTLASS's headers (25 MB, used only by TVM's CUTLASS offload, which codegen
# does not use) and the WebGPU JS runtime, as one .tar.xz with xz's x86 filter and a 256 MiB
# dictionary. gpu_check.sh unpacks it into the same --target folder pip installs the wheels into.
# Packing takes ~5 minutes of one core's CPU time (17 minutes of wall time on a busy 2-core machine);
# it is skipped when the archive is already there.
#
# Everything else is a plain wheel: pure-Python ones where they exist (black and pytokens also ship
# mypyc-compiled wheels 10x larger), else manylinux cp312. Each Requires-Dist was checked against
# the GPU image's package list (/work/.library/device/KINDS.md): attrs, click, packaging,
# mypy-extensions, typing-extensions, numpy, ml-dtypes, jinja2, pyyaml, safetensors, tokenizers, tqdm,
# torch, transformers, pytest and hypothesis are there; pathspec is too, but black needs >= 1.0.
#
#   bash bench/fetch_gpu_wheels.sh        # PYTHON=... to pick the pip (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
DEST=.whl
TVM_VERSION=0.27.0.post1
TVM_ARCHIVE=$DEST/apache_tvm-$TVM_VERSION-slim.tar.xz
CACHE=${GPU_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codegen-gpu-wheels}

# Native code: cp312 manylinux x86_64 wheels.
BINARY=(apache-tvm-ffi==0.1.15.post2 rpds-py==2026.9.1)
# Pure Python (py3-none-any).
PURE=(
    jsonschema==4.26.0 referencing==0.37.0 jsonschema-specifications==2025.9.1
    black==26.10.1 pytokens==0.4.1 platformdirs==4.14.9 pathspec==1.1.1
    ruamel.yaml==0.19.1
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$DEST" "$CACHE" .git/info
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

# One version of each: drop every wheel first (two versions of one package stop the whole install).
rm -f "$DEST"/*.whl
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation py --abi none --platform any -d "$DEST" "${PURE[@]}"

if [[ ! -s $TVM_ARCHIVE ]]; then
    rm -f "$DEST"/apache_tvm-*.tar.xz
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$CACHE" "apache-tvm==$TVM_VERSION"
    wheel=$(ls "$CACHE"/apache_tvm-"$TVM_VERSION"-*.whl | head -1)
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$stage"
    rm -rf "$stage"/tvm/3rdparty/cutlass "$stage"/tvm/web
    mkdir -p "$stage"/tvm/3rdparty   # nn.extern checks that the folder exists
    echo "packing $(du -sh "$stage" | cut -f1) of apache-tvm $TVM_VERSION into $TVM_ARCHIVE (5-20 minutes) ..."
    tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner -cf - tvm "apache_tvm-$TVM_VERSION.dist-info" \
        | xz --x86 --lzma2=preset=9e,dict=256MiB -T1 > "$TVM_ARCHIVE.part"
    mv "$TVM_ARCHIVE.part" "$TVM_ARCHIVE"
fi

echo "wheels and archives in $DEST:"
ls -l "$DEST" | awk 'NR > 1 {printf "  %10d  %s\n", $5, $9}'
carried=$(du -cb "$DEST"/* | tail -1 | cut -f1)
repo=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$((carried + repo))
awk -v c="$carried" -v r="$repo" -v t="$total" 'BEGIN {m = 1048576; printf "carried %.1f MiB + working tree %.1f MiB = %.1f MiB of the device call%cs 64 MiB\n", c / m, r / m, t / m, 39}'
if (( total > 64 * 1048576 )); then
    echo "ERROR: over the 64 MiB a device call can carry" >&2
    exit 1
fi

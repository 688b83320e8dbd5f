#!/usr/bin/env bash
# The GPU check (issue 21) from a clean checkout on a CUDA machine that has no network: installs what that
# machine lacks from carried wheels, then runs bench/gpu_check.py under a hard time limit.
#
#   bash bench/gpu_check.sh [--wheels DIR] [--dry-run] [--budget-seconds N] [--results-dir DIR] [driver options]
#
#   --wheels DIR          pip install --no-index --find-links DIR: deepspeed, webdataset, jiwer, soundfile, soxr
#                         (and their dependencies), accelerate if the machine lacks it, then this checkout
#                         (pip install --no-deps -e .; without it the driver runs from the checkout anyway)
#   --budget-seconds N    the whole script, installs included, ends within N s (default 480); the driver gets
#                         what is left minus 15 s, and `timeout` stops it 5 s before the end whatever happens
#   --results-dir DIR     where gpu_check.json and gpu_check.md go (default bench/results)
#   --dry-run             CPU, tiny sizes (about 2-3 minutes on 2 cores)
#   anything else goes to the driver, e.g. --parts train_large_fp16,hf_trainer_large to rerun two parts
#
# Making DIR here beforehand (this needs the network; versions from `.venv/bin/pip freeze`, so the GPU machine runs
# what the tests here run). --no-build-isolation: deepspeed's sdist imports torch to build, and should use this
# venv's instead of downloading another one; the wheel is pure Python (its CUDA ops are JIT-compiled where used):
#
#   .venv/bin/pip wheel --no-deps --no-build-isolation -w wheels/ \
#       deepspeed==0.19.8 webdataset==1.0.2 jiwer==4.0.0 soundfile==0.14.0 soxr==1.1.0 \
#       hjson==3.1.0 ninja==1.13.2 py-cpuinfo==9.0.0 msgpack==1.2.4 einops==0.8.2 psutil==7.2.2 \
#       pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#       braceexpand==0.1.7 RapidFuzz==3.14.6 click==8.5.1 cffi==2.1.1 pycparser==3.12 accelerate==1.16.0
#
# The compiled ones (soxr, RapidFuzz, cffi, msgpack, pydantic_core) are built for this Python (3.11). If the GPU
# machine's Python differs (this script prints it), fetch those for it instead, e.g. for 3.12:
#
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d wheels/ soxr==1.1.0 RapidFuzz==3.14.6 cffi==2.1.1 msgpack==1.2.4 pydantic_core==2.50.5
#
# torch (CUDA), transformers 5.x and numpy are expected on the machine already and are not carried.
set -euo pipefail
started=$SECONDS
cd "$(dirname "$0")/.."

wheels="" budget=480 results="bench/results" passed=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) wheels="$2"; shift 2 ;;
        --budget-seconds) budget="$2"; shift 2 ;;
        --results-dir) results="$2"; shift 2 ;;
        *) passed+=("$1"); shift ;;
    esac
done
python="${PYTHON:-python3}"

echo "== $(date -u +%FT%TZ) $(hostname); $("$python" --version 2>&1) at $(command -v "$python"); $(nproc) CPU cores"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi
else
    echo "(no nvidia-smi)"
fi
df -h /dev/shm 2>/dev/null || true  # DataLoader workers hand batches over in /dev/shm: a container's 64 MB is too little

if [ -n "$wheels" ]; then
    echo "== installing from $wheels"
    "$python" -m pip install --no-index --find-links "$wheels" deepspeed webdataset jiwer soundfile soxr
    "$python" -c "import accelerate" 2> /dev/null || "$python" -m pip install --no-index --find-links "$wheels" accelerate
    "$python" -m pip install --no-index --no-deps --no-build-isolation -e . \
        || echo "(pip install -e . failed: running from the checkout through PYTHONPATH)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

left=$((budget - (SECONDS - started)))
if [ "$left" -lt 60 ]; then
    echo "error: only ${left} s of the ${budget} s budget left after the installs" >&2
    exit 1
fi
echo "== bench/gpu_check.py, ${left} s left"
status=0
timeout --kill-after=5 $((left - 5)) "$python" bench/gpu_check.py --budget-seconds $((left - 15)) \
    --results-dir "$results" ${passed[@]+"${passed[@]}"} || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "(stopped by timeout at the budget: the results hold the parts finished before it)"
fi
if [ -f "$results/gpu_check.md" ]; then
    cat "$results/gpu_check.md"
    echo "== results: $results/gpu_check.json and $results/gpu_check.md"
fi
exit "$status"

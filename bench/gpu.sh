#!/usr/bin/env bash
# The GPU part of docs/SCALE.md, in one bounded run on a machine with a CUDA GPU:
#
#     bench/gpu.sh OUT_DIR [SECONDS]        (DEVICE=cpu for a dry run of the same steps)
#
# 1. the machine (nvidia-smi, python, torch) and tests/training/test_device.py, which
#    trains the same component on the CPU and on CUDA and compares them;
# 2. the --quick ML-1M-shaped pipeline with the teacher's components trained side by side
#    in three processes on the GPU, and in turn in one (each run cut at JOBS_LIMIT s);
# 3. `bench.scale` throughput of the three teacher components on the ML-1M- and
#    ML-10M-shaped sets, at their batch sizes and at 8 times them;
# 4. the full ML-10M-shaped pipeline with the time left. A run stopped at its limit is
#    recorded as such, with the steps it finished.
#
# It runs under the GPU machine's own Python and torch. Packages that machine lacks travel
# as wheels, downloaded where there is a network (2026-12-04, for Python 3.12):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#         pydantic pydantic-core annotated-types typing-inspection typing-extensions \
#         orjson faiss-cpu redis
# and installed there first: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# with PYTHONPATH=/tmp/site (bench.scale puts the tree before it for its runs).
#
# Results go to OUT_DIR (scale-gpu.json, SCALE-gpu.md: the bench.scale-gpu section of
# docs/SCALE.md; the logs in logs.tar.gz). Every step has its own time limit, so the
# whole run stays within SECONDS (default 540) and a failing step does not stop the next.
set -u
out=${1:?usage: bench/gpu.sh OUT_DIR [SECONDS]}
budget=${2:-540}
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
work=${WORK:-/tmp/bench-scale-gpu}
started=$(date +%s)
reserve=15 # seconds kept for archiving the logs at the end
left() { echo $((budget - ($(date +%s) - started) - reserve)); }
step() { # step NAME SECONDS COMMAND...: COMMAND under at most SECONDS and what is left
    local name=$1 limit=$2 now rc
    shift 2
    now=$(left)
    ((now < limit)) && limit=$now
    if ((limit < 5)); then
        echo "$(date -u +%T) $name: skipped, ${now}s left" >>"$out/steps.txt"
        return
    fi
    echo "$(date -u +%T) $name: limit ${limit}s" >>"$out/steps.txt"
    timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$? # before the line below: its $(date) would reset $? to 0
    echo "$(date -u +%T) $name: exit $rc" >>"$out/steps.txt"
}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
{
    nvidia-smi -L || true
    "$py" -c 'import sys, torch; print(sys.version); print(torch.__version__, torch.cuda.is_available())'
} >"$out/steps.txt" 2>&1
step test_device 150 "$py" -m pytest -q -p no:cacheprovider tests/training/test_device.py
common=(--work "$work" --device "$device" --marker bench.scale-gpu
    --out-json "$out/scale-gpu.json" --out-md "$out/SCALE-gpu.md" --batches 50)
# The teacher's components side by side on the one GPU (--jobs 3) against in turn
# (--jobs 1), as the --quick ML-1M-shaped pipeline's teacher step: each run is cut at
# JOBS_LIMIT seconds (the teacher step in turn took 145 s on an H200 on 2026-12-04), and
# the step leaves 60 s for bench.scale's start, the data set and its writing.
jobs_limit=$(((${JOBS_LIMIT:-190} * 2 + 60 < $(left)) ? ${JOBS_LIMIT:-190} : ($(left) - 60) / 2))
((jobs_limit > 60)) && step pipeline-ml1m-quick-jobs $((jobs_limit * 2 + 60)) "$py" -m bench.scale \
    --sets ml1m --pipeline-only --quick --jobs 3,1 --pipeline-limit "$jobs_limit" "${common[@]}"
step throughput 200 "$py" -m bench.scale --sets ml1m,ml10m --no-pipeline --batch-factors 1,8 \
    "${common[@]}"
full=$(left)
((full > 60)) && step pipeline-ml10m "$full" "$py" -m bench.scale --sets ml10m --pipeline-only \
    --pipeline-limit $((full - 20)) "${common[@]}"
logs=("$work"/*.log)
[[ -e ${logs[0]} ]] && tar czf "$out/logs.tar.gz" -C "$work" "${logs[@]##*/}"
cat "$out/steps.txt"

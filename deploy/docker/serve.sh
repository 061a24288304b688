#!/bin/sh
# Starts the serving workers; the image's CMD, the Kubernetes Deployment and the
# end-to-end test all run this same script so they cannot drift apart.
set -eu

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    # Files left by a previous run would be summed into this run's counters and keep
    # dead workers' gauges alive, so the directory must start empty.
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

# uvicorn's own default for --workers is $WEB_CONCURRENCY; it is spelled out so the
# number of processes sharing the multiprocess metrics directory is visible here.
exec uvicorn app.main:app \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --workers "${WEB_CONCURRENCY:-1}" \
    --no-access-log \
    "$@"

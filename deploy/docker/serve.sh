#!/bin/sh
# Starts the serving workers; the image's CMD, the Kubernetes Deployment, `make serve` and
# the end-to-end test all run this same script so they cannot drift apart.
set -eu

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    # Files left by a previous run would be summed into this run's counters and keep
    # dead workers' gauges alive, so the directory must start empty.
    find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -delete
fi

# The project's logging set-up, shipped inside the app package: JSON lines from uvicorn's
# first message on, one access line per request (the app's), no ANSI colour fields.
LOG_CONFIG="${LOG_CONFIG:-$(python -c 'from app.logging_setup import LOG_CONFIG_PATH; print(LOG_CONFIG_PATH)')}"

# uvicorn's own default for --workers is $WEB_CONCURRENCY; it is spelled out so the
# number of processes sharing the multiprocess metrics directory is visible here.
# --http: uvicorn's protocol with a bound on the size of a request head and on the time
# to send it (HTTP_MAX_HEADER_BYTES, HTTP_HEADER_TIMEOUT_SECONDS; app/http_protocol.py).
# --timeout-keep-alive closes idle keep-alive connections.
exec uvicorn app.main:app \
    --host "${HOST:-0.0.0.0}" \
    --port "${PORT:-8000}" \
    --workers "${WEB_CONCURRENCY:-1}" \
    --http app.http_protocol:HttpProtocol \
    --log-config "$LOG_CONFIG" \
    --timeout-keep-alive "${KEEP_ALIVE_SECONDS:-5}" \
    --no-access-log \
    "$@"

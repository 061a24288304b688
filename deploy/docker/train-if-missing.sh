#!/bin/sh
# One-shot trainer for docker compose and the Kubernetes Job: builds a model bundle into
# $OUT_DIR unless a complete one is already there, so restarts do not retrain.
set -eu

OUT_DIR="${OUT_DIR:-/models}"
DATASET="${DATASET:-ml-100k}"
SPLIT="${SPLIT:-none}"

# `current` is switched atomically only after a bundle is written and verified, so its
# manifest existing means a complete bundle.
if [ -f "$OUT_DIR/current/manifest.json" ]; then
    echo "train-if-missing: $OUT_DIR/current already holds a bundle; nothing to do"
    exit 0
fi

# Progress bars only garble container logs.
set -- --dataset "$DATASET" --split "$SPLIT" --out-dir "$OUT_DIR" --no-progress
# A mounted data directory wins; an empty or absent one means the pipeline downloads
# the official archive itself (checksum verified).
if [ -n "${DATA_DIR:-}" ] && [ -d "$DATA_DIR" ] && [ -n "$(ls -A "$DATA_DIR")" ]; then
    set -- --data-dir "$DATA_DIR" "$@"
fi

# TRAIN_EXTRA_ARGS is split on spaces on purpose (e.g. "--quick").
# shellcheck disable=SC2086
exec python -m training pipeline "$@" ${TRAIN_EXTRA_ARGS:-}

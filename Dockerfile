# syntax=docker/dockerfile:1.7
#
# Targets (docs/deploy.md):
#   serve      slim CPU serving image, no torch          docker build --target serve -t recsys-distill:serve .
#   serve-gpu  CUDA + cuDNN runtime with onnxruntime-gpu  docker build --target serve-gpu -t recsys-distill:gpu .
#   train      torch (CPU) + the training package; builds a model bundle into /models
#
# All images run as the same non-root uid so a bundle written by `train` into a shared
# volume is readable by `serve`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG APP_UID=10001

# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------------------
# Serving dependencies are installed into a virtualenv here and only the virtualenv is
# copied into the runtime stage, so build leftovers never reach the served image.
FROM python-base AS serve-build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY contract ./contract
# Only the CPU ONNX Runtime extra: the serving image must not carry torch.
RUN pip install ".[cpu]"

# ---------------------------------------------------------------------------------------
FROM python-base AS serve
ARG APP_UID
RUN useradd --uid "${APP_UID}" --user-group --no-create-home --shell /usr/sbin/nologin recsys \
    && mkdir -p /models /tmp/prometheus-multiproc /var/lib/recsys \
    && chown "${APP_UID}:${APP_UID}" /models /tmp/prometheus-multiproc /var/lib/recsys
COPY --from=serve-build /opt/venv /opt/venv
COPY deploy/docker/serve.sh /usr/local/bin/recsys-serve
ENV PATH=/opt/venv/bin:$PATH \
    MODEL_DIR=/models/current \
    ORT_PROVIDERS=CPUExecutionProvider \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc \
    WEB_CONCURRENCY=2 \
    PORT=8000
WORKDIR /srv
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
# python:slim has no curl; a failed or non-2xx urlopen exits non-zero.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["sh", "/usr/local/bin/recsys-serve"]

# ---------------------------------------------------------------------------------------
# GPU serving: the same service on a CUDA runtime with cuDNN and the `gpu` extra alone, so
# onnxruntime-gpu is the only wheel providing the `onnxruntime` module (the two must not
# coexist; the CPU one is the `cpu` extra, never installed here). Pair graphs and user towers
# run on CUDA; the retrieval search (NumPy, faiss-cpu) stays on the CPU, since faiss-gpu
# has no PyPI wheel and one query's search takes milliseconds.
FROM ${CUDA_IMAGE} AS serve-gpu
ARG APP_UID
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY contract ./contract
RUN pip install ".[gpu]" \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
    && rm -rf /src
# Ubuntu 24.04 images ship a uid-1000 `ubuntu` user; ours gets its own uid as in `serve`.
RUN useradd --uid "${APP_UID}" --user-group --no-create-home --shell /usr/sbin/nologin recsys \
    && mkdir -p /models /tmp/prometheus-multiproc /var/lib/recsys \
    && chown "${APP_UID}:${APP_UID}" /models /tmp/prometheus-multiproc /var/lib/recsys
COPY deploy/docker/serve.sh /usr/local/bin/recsys-serve
ENV MODEL_DIR=/models/current \
    ORT_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc \
    WEB_CONCURRENCY=1 \
    PORT=8000
WORKDIR /srv
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
CMD ["sh", "/usr/local/bin/recsys-serve"]

# ---------------------------------------------------------------------------------------
# Offline training: torch from the CPU wheel index (pinned; the train extra admits it so
# pip installs no other torch), then the training package.
FROM python-base AS train
ARG APP_UID
ARG TORCH_VERSION
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY training ./training
# The CPU ONNX Runtime checks the exported files (training/export.py).
RUN pip install ".[cpu,train]" && rm -rf /src
# The download cache exists in the image so a volume mounted there (docker-compose.yml)
# starts owned by the training user rather than root.
RUN useradd --uid "${APP_UID}" --user-group --create-home --shell /usr/sbin/nologin recsys \
    && mkdir -p /models /data /home/recsys/.cache \
    && chown "${APP_UID}:${APP_UID}" /models /data /home/recsys/.cache
COPY deploy/docker/train-if-missing.sh /usr/local/bin/recsys-train-if-missing
ENV OUT_DIR=/models \
    DATA_DIR=/data \
    DATASET=ml-100k \
    SPLIT=none
WORKDIR /home/recsys
USER ${APP_UID}:${APP_UID}
VOLUME ["/models"]
CMD ["sh", "/usr/local/bin/recsys-train-if-missing"]

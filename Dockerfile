# syntax=docker/dockerfile:1
# sidrec images. Two targets:
#
#   serve  the online service: service/ + the `serve` extra only (no torch, no training/), non-root,
#          HEALTHCHECK on /healthz, `python -m service`. onnxruntime-gpu on a CUDA runtime base: the
#          CUDA provider is used when a GPU is visible, the CPU provider otherwise (same image).
#   train  torch + everything: builds a bundle (`python -m training pipeline ...` ends with export).
#
# GPU hosts (default):
#   docker build --target serve -t sidrec-serve .
# CPU-only hosts (slim Python base + the CPU onnxruntime; ~10x smaller):
#   docker build --target serve -t sidrec-serve \
#     --build-arg SERVE_BASE=python:3.12-slim --build-arg ONNXRUNTIME=onnxruntime .
# Training image (PyPI torch wheels carry CUDA and also run on CPU; CPU-only wheels are smaller):
#   docker build --target train -t sidrec-train \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .

ARG SERVE_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG TRAIN_BASE=python:3.12-slim

# ---------------------------------------------------------------- serve: dependencies in a venv
FROM ${SERVE_BASE} AS serve-deps
ARG ONNXRUNTIME=onnxruntime-gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CUDA bases ship without Python; python:*-slim bases already have it.
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
COPY pyproject.toml /tmp/sidrec/pyproject.toml
COPY deploy/docker/requirements.py /tmp/sidrec/requirements.py
RUN python3 /tmp/sidrec/requirements.py /tmp/sidrec/pyproject.toml --extras serve --onnxruntime "${ONNXRUNTIME}" \
      > /tmp/sidrec/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/sidrec/requirements.txt

# ---------------------------------------------------------------- serve: the runtime image
FROM ${SERVE_BASE} AS serve
ENV DEBIAN_FRONTEND=noninteractive
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin sidrec \
    && mkdir /bundles \
    && mkdir /spool && chown sidrec /spool
COPY --from=serve-deps /opt/venv /opt/venv
WORKDIR /app
# Exactly these files make the service (tests/deploy checks that it starts from them alone).
COPY --chown=root:root service/ /app/service/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDREC_HOST=0.0.0.0 \
    SIDREC_PORT=8000 \
    SIDREC_BUNDLE_PATH=/bundles/demo \
    SIDREC_SPOOL_DIR=/spool
USER sidrec
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SIDREC_PORT', '8000') + '/healthz', timeout=2)"]
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------- train: torch + the pipeline
FROM ${TRAIN_BASE} AS train
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONPATH=/src
WORKDIR /src
COPY pyproject.toml /src/pyproject.toml
COPY deploy/docker/requirements.py /src/deploy/docker/requirements.py
# torch first, from the chosen index, so the rest resolves against it instead of pulling another build.
RUN python /src/deploy/docker/requirements.py pyproject.toml --extras train | grep '^torch' \
      | xargs pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
    && python /src/deploy/docker/requirements.py pyproject.toml --extras serve,train > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && useradd --system --uid 10001 --home-dir /src --shell /usr/sbin/nologin sidrec \
    && mkdir /bundles && chown sidrec /bundles
COPY training/ /src/training/
COPY service/ /src/service/
COPY configs/ /src/configs/
COPY deploy/docker/build-bundle.sh /usr/local/bin/build-bundle
USER sidrec
# Builds the demo bundle into $BUNDLE_ROOT/$BUNDLE_NAME unless a bundle is already there.
ENV BUNDLE_ROOT=/bundles BUNDLE_NAME=demo PIPELINE_SOURCE=synthetic
CMD ["build-bundle"]

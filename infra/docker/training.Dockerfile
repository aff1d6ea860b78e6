# syntax=docker/dockerfile:1
# The trainer image: the project with torch, for `recsys up --no-serve` (simulate or use imported data,
# features, train, materialize), `recsys train` and `torchrun -m gpu.train`. Build from the repository root:
#   CPU (default):
#     docker build -f infra/docker/training.Dockerfile -t recsys-trainer .
#   CUDA (a CUDA base; PyTorch's CUDA wheels; the host needs the NVIDIA container toolkit):
#     docker build -f infra/docker/training.Dockerfile \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t recsys-trainer:cuda .
ARG BASE_IMAGE=python:3.11.13-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive \
    RECSYS_HOME=/var/lib/recsys

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A base without Python 3.11 (a CUDA image) gets it from its distribution; every base then uses one venv.
# hadolint ignore=DL3008
RUN if ! command -v python3.11 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3.11 -m venv /opt/venv \
    && groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid recsys --home-dir /var/lib/recsys --no-create-home recsys \
    && mkdir -p /var/lib/recsys/logs \
    && chown -R recsys:recsys /var/lib/recsys
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Layers from the most stable to the most often changed: torch, then dependencies, then the source.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY README.md ./
COPY feature_repo ./feature_repo
COPY training ./training
COPY serving ./serving
COPY monitoring ./monitoring
COPY services ./services
COPY gpu ./gpu
RUN pip install --no-cache-dir --no-deps .

USER 10001:10001
WORKDIR /var/lib/recsys
CMD ["recsys", "up", "--no-serve"]

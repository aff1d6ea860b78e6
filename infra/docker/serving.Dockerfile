# syntax=docker/dockerfile:1
# The API image: the project without torch (its `train` extra is not installed), run as a non-root user.
# Build from the repository root:
#   docker build -f infra/docker/serving.Dockerfile -t recsys-api .
# Runs `recsys serve` on the newest bundle in $RECSYS_HOME (a volume the trainer writes).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECSYS_HOME=/var/lib/recsys \
    RECSYS_HOST=0.0.0.0 \
    RECSYS_PORT=8000

RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid recsys --home-dir /var/lib/recsys --no-create-home recsys \
    && mkdir -p /var/lib/recsys/logs \
    && chown -R recsys:recsys /var/lib/recsys

WORKDIR /app
# Dependencies first: this layer is rebuilt only when pyproject.toml changes, not on every source edit.
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
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import services.serving_process, sys; assert 'torch' not in sys.modules"

USER 10001:10001
WORKDIR /var/lib/recsys
EXPOSE 8000
# Ready = bundle loaded and online store reachable (GET /readyz answers 200).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RECSYS_PORT', '8000') + '/readyz', timeout=2)"]
CMD ["recsys", "serve"]

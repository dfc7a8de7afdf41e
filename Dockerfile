# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target api    -t lorareg-api .     (no torch: registry, API, CLI)
#   docker build --target worker -t lorareg-worker .  (adds CPU-only torch and numba for merges)
# Multi-stage: wheels are built in a builder stage; runtime stages are slim and run as a
# non-root user. No secrets are baked in: configuration comes from LORAREG_* at run time.

FROM python:3.11-slim AS builder
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md ./
COPY registry ./registry
COPY cli ./cli
COPY merge_worker ./merge_worker
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LORAREG_HOME=/var/lib/lorareg
RUN groupadd --system lorareg && useradd --system --gid lorareg --home /var/lib/lorareg lorareg \
    && mkdir -p /var/lib/lorareg && chown lorareg:lorareg /var/lib/lorareg
COPY --from=builder /wheels /wheels

FROM base AS api
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER lorareg
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz'); sys.exit(0)"
CMD ["uvicorn", "registry.api.app:factory", "--factory", "--host", "0.0.0.0", "--port", "8080", "--workers", "4", "--proxy-headers"]

FROM base AS worker
# CPU torch from the PyTorch CPU index: never the multi-GB CUDA build.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir "$(ls /wheels/*.whl)[worker]" && rm -rf /wheels
USER lorareg
CMD ["python", "-m", "merge_worker", "--workers", "1"]

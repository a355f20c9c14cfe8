# syntax=docker/dockerfile:1
# The sidecar container (and the autoscaler controller and the activator): slim Python
# with rscore in /opt/rscore. No R: the sidecar only speaks the worker protocol.
#
#   docker build -f docker/sidecar.Dockerfile -t registry.example.com/rscore/sidecar:0.1.0 .
#
# The base is pinned by digest: replace the zeros with the digest of
# python:3.11-slim-bookworm (`docker buildx imagetools inspect python:3.11-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0000000000000000000000000000000000000000000000000000000000000000

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY scripts/install-python scripts/
COPY pyproject.toml README.md ./
COPY r_scorer r_scorer
COPY sidecar sidecar
COPY autoscaler autoscaler
COPY activator activator
COPY sim sim
COPY rscore_cli rscore_cli
# rpy2 is a dependency of the project, but this image never starts R: its ABI mode builds
# as pure Python, with no R and no compiler present.
RUN RPY2_CFFI_MODE=ABI PIP_NO_CACHE_DIR=1 scripts/install-python /opt/rscore .

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/rscore /opt/rscore
ENV PATH=/opt/rscore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 10001:10001
EXPOSE 8000 9090
ENTRYPOINT ["/opt/rscore/bin/rscore"]
CMD ["sidecar", "--socket-dir", "/run/rscore", "--host", "0.0.0.0"]

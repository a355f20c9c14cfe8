# syntax=docker/dockerfile:1
# The Python-only image: the sidecar, and (same image, another command in the manifests)
# the autoscaler controller and the activator. No R and no rpy2: these processes only
# speak the worker protocol, Kubernetes' API and HTTP.
#
#   make images   # podman, a locally made base; or by hand, with docker:
#   docker build -f docker/sidecar.Dockerfile -t registry.example.com/rscore/sidecar:0.1.0 .
#
# Debian's python3 (3.11, as the scorer's) on the same pinned base as docker/scorer.Dockerfile;
# `scripts/pin-base-images` prints the current digest.
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

FROM ${DEBIAN_IMAGE} AS build
WORKDIR /src
COPY scripts/install-debian-packages scripts/install-python scripts/image-requirements scripts/
RUN scripts/install-debian-packages python3 python3-venv
COPY pyproject.toml README.md ./
COPY rscore rscore
# The project's dependencies without those only R workers and the simulator's plots use
# (scripts/image-requirements says why each is left out), then the project itself.
# The package index comes as build secrets, as in docker/scorer.Dockerfile.
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=pipca,target=/etc/pip-ca.crt \
    scripts/image-requirements python > /tmp/requirements.txt \
    && PIP_NO_CACHE_DIR=1 scripts/install-python /opt/rscore -r /tmp/requirements.txt \
    && PIP_NO_CACHE_DIR=1 scripts/install-python /opt/rscore --no-deps . \
    && /opt/rscore/bin/python -m pip uninstall --quiet --yes pip

FROM ${DEBIAN_IMAGE}
RUN --mount=type=bind,source=scripts,target=/mnt/scripts \
    /mnt/scripts/install-debian-packages python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/rscore /opt/rscore
ENV PATH=/opt/rscore/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 10001:10001
EXPOSE 8000 9090
ENTRYPOINT ["/opt/rscore/bin/rscore"]
CMD ["sidecar", "--socket-dir", "/run/rscore", "--host", "0.0.0.0"]

# syntax=docker/dockerfile:1
# The r-scorer container: Debian's R, the model packages, rscore in /opt/rscore, and one
# model bundle at /models/model (copied in here, or mounted over it at run time).
#
#   make images   # podman, a locally made base; or by hand, with docker:
#   docker build -f docker/scorer.Dockerfile --build-arg BUNDLE=examples/build/mtcars-lm \
#     -t registry.example.com/rscore/scorer-mtcars-lm:0.1.0 .
#
# The base is pinned by digest; `scripts/pin-base-images` prints the current one (run it
# where a registry is reachable and paste it here with each rebuild). Where none is,
# `make images` makes Debian 12 with debootstrap and passes
# --build-arg DEBIAN_IMAGE=localhost/debian:bookworm-slim (docs/deploy.md, "Images").
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
# The model packages from Debian: the Makefile's list without its test tools. Add what
# your bundle needs (--build-arg R_PACKAGES="... r-cran-xgboost").
ARG R_PACKAGES="r-cran-jsonlite r-cran-randomforest r-cran-rpart r-cran-gbm r-cran-glmnet"

FROM ${DEBIAN_IMAGE} AS build
WORKDIR /src
COPY scripts/install-debian-packages scripts/install-python scripts/image-requirements scripts/
# r-base-dev and python3-dev: rpy2 compiles against R's and Python's headers here.
RUN scripts/install-debian-packages python3 python3-venv python3-dev r-base-core r-base-dev
COPY pyproject.toml README.md ./
COPY rscore rscore
# The project's dependencies without the autoscaler's and the simulator's
# (scripts/image-requirements says why), then the project itself; pip goes at the end.
# The package index comes as build secrets (make images passes the host's pip settings;
# without them pip uses PyPI), so no index URL or certificate is left in a layer.
RUN --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=secret,id=pipca,target=/etc/pip-ca.crt \
    scripts/image-requirements scorer > /tmp/requirements.txt \
    && PIP_NO_CACHE_DIR=1 scripts/install-python /opt/rscore -r /tmp/requirements.txt \
    && PIP_NO_CACHE_DIR=1 scripts/install-python /opt/rscore --no-deps . \
    && /opt/rscore/bin/python -m pip uninstall --quiet --yes pip

FROM ${DEBIAN_IMAGE}
ARG R_PACKAGES
# Run time needs R, the model packages and the interpreter the venv was made with; no
# compilers. The script comes in through a bind mount, so it stays out of the image.
RUN --mount=type=bind,source=scripts,target=/mnt/scripts \
    /mnt/scripts/install-debian-packages python3 r-base-core ${R_PACKAGES} \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/rscore /opt/rscore
ARG BUNDLE=examples/build/mtcars-lm
COPY ${BUNDLE} /models/model
# The pod mounts an emptyDir on /tmp (the root file system is read-only): R's session
# files and anything that wants a home go there.
ENV PATH=/opt/rscore/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 10001:10001
ENTRYPOINT ["/opt/rscore/bin/rscore"]
CMD ["scorer", "/models/model", "--socket-dir", "/run/rscore"]

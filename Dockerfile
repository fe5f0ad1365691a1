# One image for the coordinator and the workers of preproc.
#   docker build -t preproc:0.1.0 .
# Stage 1 builds wheels (the package and any dependency without a wheel for this platform);
# the final stage installs them offline into a slim Python with no compiler, and runs as
# uid 1000 (restricted Pod Security Standard: runAsNonRoot, read-only root filesystem).

# The base image, pinned by digest: the same bytes on every build, whatever the tag does
# later. The digest is that of the multi-platform index of python:3.11.10-slim-bookworm as
# published on Docker Hub (taken from a Renovate-maintained public Dockerfile; not checked
# against the registry from this offline machine). To move it: `docker buildx imagetools
# inspect python:3.11-slim-bookworm` prints the tag's current index digest ("Digest:");
# put tag and digest here, or pass --build-arg PYTHON_IMAGE=python:<tag>@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

# Extras beside the base install (which runs the default spec, language ID included):
# k8s (the Indexed-Job executor, the in-cluster coordinator), s3 (s3fs) and ray (the KubeRay
# overlay runs this image as head, workers and submitter). Without KubeRay, a smaller image:
#   docker build --build-arg EXTRAS=k8s,s3 -t preproc:0.1.0 .
# tests/test_readme.py checks these cover the default spec and the documented uses.
ARG EXTRAS=k8s,s3,ray

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY preproc ./preproc
RUN pip wheel --wheel-dir /wheels ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "preproc[${EXTRAS}]" \
 && groupadd --gid 1000 preproc \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin preproc
USER 1000:1000
WORKDIR /tmp
# Pods always give an explicit command (`preproc worker ...`, `preproc run ...`); this is
# only for `docker run preproc:0.1.0 --help`.
ENTRYPOINT ["preproc"]
CMD ["--help"]

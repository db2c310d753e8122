# syntax=docker/dockerfile:1.7
# Images from one tree (DESIGN.md §1); base images pinned by version (pin digests in your registry
# mirror with `--build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:…`):
#   docker build --target operator -t kubetune-operator .   # the kopf operator: no torch, ~150 MB
#   docker build --target trainer  -t kubetune-trainer  .   # training pods: torch, transformers, peft, deepspeed
#   docker build --target serve    -t kubetune-serve    .   # the transformers serving runtime, no deepspeed
# The trainer's CUDA base is a build arg: --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# torch comes from TORCH_INDEX_URL (default: the CUDA 12.8 wheels; https://download.pytorch.org/whl/cpu for CPU).
# tests/unit/test_dockerfile.py lints this file (hadolint) and checks that every entrypoint and every
# command the operator renders is a console script of the package that accepts those flags.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- wheel: build the kubetune wheel once, from the source only (see .dockerignore)
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer ./trainer
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- operator: slim Python, no torch, non-root, read-only root filesystem
FROM ${PYTHON_IMAGE} AS operator
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
COPY --from=wheel /wheels /wheels
# hadolint ignore=DL3013
RUN pip install "$(ls /wheels/kubetune-*.whl)[operator]" && rm -rf /wheels \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin kubetune
USER 65532:65532
EXPOSE 8080 8081
# Writes nothing outside /tmp (an emptyDir in the chart): readOnlyRootFilesystem works.
ENTRYPOINT ["kubetune"]
CMD ["run"]

# ---- trainer: CUDA runtime + torch, transformers, peft, deepspeed and the serving runtime
FROM ${CUDA_IMAGE} AS trainer
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# TOKENIZERS_PARALLELISM is no secret (DL3064 matches the word TOKEN).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 DEBIAN_FRONTEND=noninteractive \
    HF_HOME=/tmp/hf-home TOKENIZERS_PARALLELISM=false
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3 /usr/local/bin/python
COPY --from=wheel /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --index-url "$TORCH_INDEX_URL" torch \
 && pip install "$(ls /wheels/kubetune-*.whl)[trainer,serve]" && rm -rf /wheels \
 && useradd --uid 65532 --user-group --create-home --shell /usr/sbin/nologin kubetune
USER 65532:65532
# Training pods run `kubetune-train launch …` and validation pods `kubetune-train validate-data …`
# (the operator sets the command); the image default only prints the help.
ENTRYPOINT []
CMD ["kubetune-train", "--help"]

# ---- serve: the transformers runtime (kubetune-serve) on CPU or GPU, without deepspeed and training deps
FROM ${PYTHON_IMAGE} AS serve
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/tmp/hf-home TOKENIZERS_PARALLELISM=false
COPY --from=wheel /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --index-url "$TORCH_INDEX_URL" torch \
 && pip install "$(ls /wheels/kubetune-*.whl)[serve]" && rm -rf /wheels \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin kubetune
USER 65532:65532
EXPOSE 8000
ENTRYPOINT []
CMD ["kubetune-serve", "--help"]

# syntax=docker/dockerfile:1.7
# Two images from one tree (DESIGN.md §1):
#   docker build --target operator -t kubetune-operator .   # the kopf operator: no torch
#   docker build --target trainer  -t kubetune-trainer  .   # training pods and the transformers runtime
# CUDA torch comes from the package index as usual; pass TORCH_INDEX_URL to pick another build.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer ./trainer

FROM base AS operator
RUN pip install ".[operator]" && useradd --uid 65532 --no-create-home kubetune
USER 65532
EXPOSE 8080 8081
ENTRYPOINT ["kubetune", "run"]

FROM base AS trainer
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
 && pip install ".[trainer,serve]" && useradd --uid 65532 --create-home kubetune
USER 65532
ENV HF_HOME=/tmp/hf-home TOKENIZERS_PARALLELISM=false
# Training pods run `kubetune-train launch …` (set by the operator); serving pods `kubetune-serve …`.
ENTRYPOINT []
CMD ["kubetune-train", "--help"]

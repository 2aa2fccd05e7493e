# slidefed coordinator image: flower-superlink (TLS, SuperNode authentication) on
# loopback behind nginx, which serves only the Fleet API on port 8000, and the
# ServerApp's dependencies, on Flower's official SuperExec image. The SuperLink
# runs the ServerApp in subprocess isolation inside this container, so it needs
# slidefed and torch; Flower's plain superlink image has neither.
#
#   docker build -f docker/coordinator.Dockerfile -t slidefed-coordinator .
#
# Mount: /coordinator (one volume: server.toml, pki/, state/ with the SuperLink
# database, the audit key, FLWR_HOME folders, and run folders).
ARG FLWR_VERSION=1.42.0
FROM flwr/superexec:${FLWR_VERSION}

# Install as root (into the image's Python environment); run as "app" (below).
USER root

# nginx: the public front (slidefed server start runs it as user "app").
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*

ARG TORCH_VERSION=2.13.0
RUN python -m pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

WORKDIR /app/src
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app slidefed ./slidefed
RUN sed -i 's/"flwr\[simulation\]==/"flwr==/' pyproject.toml \
    && python -m pip install --no-cache-dir ".[server]" \
    && slidefed app build --out /app/slidefed-app

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

USER app
WORKDIR /app
EXPOSE 8000
VOLUME ["/coordinator"]
ENTRYPOINT ["slidefed"]
CMD ["server", "start", "--config", "/coordinator/server.toml"]

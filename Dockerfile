# syntax=docker/dockerfile:1
# Bridge in one container: gunicorn serving the app, config/ certs/ data/ as volumes.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# lxml and xmlsec come as manylinux wheels with matching libxml2: no compiler needed.
RUN python -m venv /opt/bridge \
 && /opt/bridge/bin/pip install --upgrade pip \
 && /opt/bridge/bin/pip install .

FROM python:3.11-slim-bookworm
ENV PATH=/opt/bridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_CONFIG=/app/config/bridge.yaml
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --home-dir /app --shell /usr/sbin/nologin bridge \
 && mkdir -p /app/config /app/certs /app/data \
 && chown -R bridge:bridge /app \
 && chmod 0700 /app/certs /app/data
COPY --from=build /opt/bridge /opt/bridge
COPY --chown=bridge:bridge config/bridge.example.yaml /app/config.example/bridge.example.yaml
WORKDIR /app
USER bridge
# The repository layout: config/bridge.yaml refers to ../certs and ../data/bridge.db.
VOLUME ["/app/config", "/app/certs", "/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# gunicorn workers; the first start of an empty volume set can use `bridge quickstart` instead.
CMD ["bridge", "serve"]

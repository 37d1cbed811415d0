# relay365 container image.
#   docker build -t relay365 .     (buildah/podman: add --format docker, or HEALTHCHECK is dropped)
#   docker run -d --name relay365 -p 2525:2525 -p 1143:1143 \
#     -v /srv/relay365/config.yaml:/etc/relay365/config.yaml:ro -v relay365-state:/var/lib/relay365 relay365
# The config must say state_dir: /var/lib/relay365 and listen on 0.0.0.0 (or [::]) inside the
# container. Admin commands: docker exec -it relay365 relay365 auth MAILBOX -c /etc/relay365/config.yaml

ARG PYTHON=python:3.11-slim-bookworm

# -- build: a venv with the dependencies (one layer, cached until pyproject.toml changes), then the
#    package itself without dependencies (the layer that changes with every commit)
FROM ${PYTHON} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/relay365
WORKDIR /src
COPY pyproject.toml README.md ./
# the same dependency list CI installs (pyproject.toml's [project] dependencies; checked by
# tests/test_packaging.py)
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /opt/relay365/bin/pip install -r /tmp/requirements.txt
COPY relay365 ./relay365
RUN /opt/relay365/bin/pip install --no-deps . && /opt/relay365/bin/relay365 --version

# -- run: the venv only, as an unprivileged user
FROM ${PYTHON}
LABEL org.opencontainers.image.title="relay365" \
      org.opencontainers.image.description="Legacy SMTP/IMAP clients to Office 365 with OAuth 2.0 (XOAUTH2)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10365 relay365 \
 && useradd --system --uid 10365 --gid relay365 --home-dir /var/lib/relay365 --shell /usr/sbin/nologin relay365 \
 && install -d -o relay365 -g relay365 -m 0700 /var/lib/relay365 \
 && install -d -m 0755 /etc/relay365
COPY --from=build /opt/relay365 /opt/relay365
COPY config.example.yaml /etc/relay365/config.example.yaml
ENV PATH=/opt/relay365/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER relay365
WORKDIR /var/lib/relay365
VOLUME ["/var/lib/relay365"]
# SMTP, IMAP, metrics/health (set http: {listen: 0.0.0.0:9465} to publish it)
EXPOSE 2525 1143 9465
# /readyz through `relay365 health` (needs http: in the config). Healthy also when degraded (a
# mailbox needs re-authorisation, the spool is stuck): the relay still serves everyone else, and an
# orchestrator that replaces unhealthy containers would cut their sessions and never fix it.
# Alert on degraded instead (contrib/prometheus-alerts.yml).
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["relay365", "health", "--allow-degraded", "-c", "/etc/relay365/config.yaml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay365"]
CMD ["serve", "-c", "/etc/relay365/config.yaml"]

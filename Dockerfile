# The shoal image, one for both roles: `shoal tracker` and `shoal peer` (entrypoint `shoal`).
# Build it with `make image` (tools/build-image.sh), which fills .cache/wheelhouse first: the build
# installs only from that wheelhouse and needs no network. Works on any Debian-like base with
# python3 (3.11) and its venv module: python:3.11-slim-bookworm (/usr/local/bin/python3) or the
# debootstrap base tools/build-image.sh makes (/usr/bin/python3).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
LABEL shoal.stage=build
COPY .cache/wheelhouse/ /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels shoal \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools \
 && /opt/venv/bin/shoal --help >/dev/null

FROM ${BASE_IMAGE}
ARG UID=10001
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="Peer-to-peer file distribution over gRPC (tracker and peer)"
RUN groupadd --system --gid ${UID} shoal \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /data --no-create-home --shell /usr/sbin/nologin shoal \
 && mkdir -p /data \
 && chown ${UID}:${UID} /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHOAL_DATA_DIR=/data
USER ${UID}:${UID}
WORKDIR /data
# tracker gRPC, peer gRPC, tracker metrics, peer metrics
EXPOSE 7400 7401 9400 9401
# shoal is PID 1 (exec form, no shell): the daemons handle SIGTERM themselves and leave gracefully.
STOPSIGNAL SIGTERM
ENTRYPOINT ["shoal"]
CMD ["--help"]

# haven-agent container image. See docs/image.md.
#
#   docker build -t haven-agent .
#   docker run --name havenAgent -d --restart=unless-stopped --hostname=$(hostname) \
#       -e dm_agent_notifier_server=http://MASTER:8761 -e dm_auth_adminPassword=SECRET \
#       -p 8771:8771 -v /run/docker.sock:/run/docker.sock \
#       -v haven-agent:/var/lib/haven-agent haven-agent
#
# Build arguments:
#   BASE            the Python base image, the same for both stages: an official
#                   python:3.X-slim image (default) or any Debian/Ubuntu image with
#                   python3 and python3-venv (e.g. one made with debootstrap).
#   WHEELHOUSE      a directory inside the build context holding every wheel needed
#                   (runtime dependencies plus setuptools and wheel for building the
#                   agent itself), for builds without PyPI: pip then runs with
#                   --no-index. Build the wheels with the base's Python minor version.
#   BUILD_PACKAGES  Debian packages to install in the build stage only (e.g.
#                   "gcc libffi-dev" on a platform without binary wheels); the
#                   final stage never gets them.

ARG BASE=python:3.11-slim

# ---------------------------------------------------------------------------
# Build stage: a virtual environment at /opt/haven-agent holding the agent,
# installed from the source (non-editable) and checked.
FROM ${BASE} AS build
ARG WHEELHOUSE=
ARG BUILD_PACKAGES=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN if [ -n "$BUILD_PACKAGES" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $BUILD_PACKAGES \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# A venv works the same on the official image (python in /usr/local) and on
# Debian's python3 (where PEP 668 forbids pip in the system site-packages).
RUN python3 -m venv /opt/haven-agent
WORKDIR /src
COPY . .
RUN set -e; \
    if [ -n "$WHEELHOUSE" ]; then \
        [ -d "$WHEELHOUSE" ] || { echo "WHEELHOUSE=$WHEELHOUSE is not a directory in the build context" >&2; exit 1; }; \
        set -- --no-index --find-links "/src/$WHEELHOUSE"; \
    fi; \
    /opt/haven-agent/bin/pip install "$@" . ; \
    /opt/haven-agent/bin/pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true; \
    rm -rf /src

# ---------------------------------------------------------------------------
# Final stage: the base plus the venv; no compiler, no pip, no source tree.
FROM ${BASE}
LABEL org.opencontainers.image.title="haven-agent" \
      org.opencontainers.image.description="Haven node agent: Docker API over TLS with Basic auth, and a node reporter" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/haven-agent /opt/haven-agent
# On SIGTERM the agent stops listening and gives open requests 5 s
# (--shutdown-grace) before closing them, below `docker stop`'s 10 s; raise
# both together if needed: -e HAVEN_AGENT_SHUTDOWN_GRACE=20 --stop-timeout 30.
ENV PATH=/opt/haven-agent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HAVEN_AGENT_DOCKER=unix:/run/docker.sock
# twistd finds plugins through twisted/plugins/dropin.cache: regenerate it
# here (as root, so a non-root agent never tries to rewrite it) and fail the
# build when the haven-agent plugin is missing (an editable install or a wheel
# without twisted/plugins would leave it out); then check the options parse.
# The user haven-agent (uid 10001) owns the state directory, for running with
# the docker group instead of root (docs/image.md). Mount a volume on
# /var/lib/haven-agent to keep the generated TLS certificate across
# re-created containers (the master and clients may pin its fingerprint).
RUN python -c "from twisted.application.service import IServiceMaker; from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin)); names = [p.tapname for p in getPlugins(IServiceMaker)]; assert 'haven-agent' in names, names" \
    && twistd haven-agent --help >/dev/null \
    && groupadd --gid 10001 haven-agent \
    && useradd --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/haven-agent --shell /usr/sbin/nologin haven-agent \
    && install -d -m 0700 -o haven-agent -g haven-agent /var/lib/haven-agent
WORKDIR /
EXPOSE 8771
# Healthy when the agent answers GET /_agent/health (no credentials needed)
# on its first listening endpoint, found from the same environment as the
# agent's, and says dockerd's socket accepts connections: a container without
# the socket mounted shows as unhealthy (haven_agent/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["python", "-m", "haven_agent.healthcheck"]
# Root by default only because /run/docker.sock is usually root:docker 0660;
# see docs/image.md for --user haven-agent with --group-add.
# Exec form, so twistd is PID 1 and gets SIGTERM from `docker stop`. No
# pidfile: a restarted container would find its own stale twistd.pid and
# refuse to start. Logs go to stdout for `docker logs`. Settings come from the
# environment (Haven's names: dm_auth_adminPassword, dm_agent_notifier_server,
# server_port, ...); arguments after the image name are added as options.
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "haven-agent"]

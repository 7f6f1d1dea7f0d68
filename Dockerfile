# haven-agent container image.
#
#   docker build -t haven-agent .
#   docker run -d --name havenAgent --restart=unless-stopped \
#       -e dm_auth_adminPassword=SECRET -p 8771:8771 \
#       -v /run/docker.sock:/run/docker.sock -v haven-agent:/var/lib/haven-agent haven-agent
#
# BASE picks the Python image. WHEELHOUSE names a directory in the build
# context holding pre-built wheels, for builds without access to PyPI.

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG WHEELHOUSE=
WORKDIR /src
COPY . .
RUN if [ -n "$WHEELHOUSE" ]; then \
        pip wheel --no-cache-dir --no-index --find-links "$WHEELHOUSE" -w /wheels . ; \
    else \
        pip wheel --no-cache-dir -w /wheels . ; \
    fi

FROM ${BASE}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels haven-agent \
    && rm -rf /wheels \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
# The Haven start string mounts the socket at /run/docker.sock.
ENV HAVEN_AGENT_DOCKER=unix:/run/docker.sock
EXPOSE 8771
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import os, socket, ssl; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; c.wrap_socket(socket.create_connection(('127.0.0.1', int(os.environ.get('server_port') or 8771)), 3)).close()"
# No pidfile: a restarted container would find its own stale one and refuse
# to start.
ENTRYPOINT ["twistd", "-n", "--pidfile=", "--logfile=-", "haven-agent"]

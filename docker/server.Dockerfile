# The tarea server. Build from the repo root:
#   docker build -f docker/server.Dockerfile -t tarea_server:latest .
# With a registry, the default base and PyPI just work. Offline, pass a local
# base and PIP_OFFLINE=1 after `pip wheel --wheel-dir build/wheels .` on the
# host: then pip installs only from those wheels (`make build_server_image`
# does all of this).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG PIP_OFFLINE=0
COPY build/wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
RUN python3 -m venv /opt/tarea \
 && if [ "$PIP_OFFLINE" = 1 ]; then \
      /opt/tarea/bin/pip install --no-cache-dir --no-index --find-links /wheels 'tarea[postgres]'; \
    else \
      /opt/tarea/bin/pip install --no-cache-dir '/src[postgres]'; \
    fi \
 && rm -rf /wheels /src

ENV PATH=/opt/tarea/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TAREA_HOST=0.0.0.0 \
    TAREA_PORT=8000 \
    TAREA_DATABASE_URL=sqlite:////var/lib/tarea/tarea.db
RUN mkdir -p /var/lib/tarea
EXPOSE 8000
CMD ["tarea"]

# The tarea server. Build from the repo root:
#   docker build -f docker/server.Dockerfile -t tarea_server:latest .
# Its dependencies are those pinned in requirements/lock.txt (`make lock`).
# With a registry, the default base and PyPI just work: pip installs the lock,
# checking its hashes. Offline, pass a local base and PIP_OFFLINE=1 after
#   pip wheel --wheel-dir build/wheels --require-hashes -r requirements/lock.txt
#   pip wheel --wheel-dir build/wheels --no-deps .
# on the host: then pip installs only from those wheels, which hold exactly the
# locked versions (`make build_server_image` does all of this).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ARG PIP_OFFLINE=0
COPY build/wheels/ /wheels/
COPY requirements/lock.txt /src/requirements/lock.txt
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
RUN python3 -m venv /opt/tarea \
 && if [ "$PIP_OFFLINE" = 1 ]; then \
      /opt/tarea/bin/pip install --no-cache-dir --no-index --find-links /wheels 'tarea[server,postgres]'; \
    else \
      /opt/tarea/bin/pip install --no-cache-dir --require-hashes -r /src/requirements/lock.txt \
      && /opt/tarea/bin/pip install --no-cache-dir --no-deps /src; \
    fi \
 && /opt/tarea/bin/pip check \
 && rm -rf /wheels /src

ENV PATH=/opt/tarea/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TAREA_HOST=0.0.0.0 \
    TAREA_PORT=8000 \
    TAREA_DATABASE_URL=sqlite:////var/lib/tarea/tarea.db
RUN mkdir -p /var/lib/tarea
EXPOSE 8000
CMD ["tarea", "serve"]

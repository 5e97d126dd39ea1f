# tarea: `make run` serves it, `make test` tests it, on a fresh Debian/Ubuntu.
# Everything missing (virtualenv, Docker engine, base image, task image) is set
# up on the way, saying so.

PYTHON     ?= python3
VENV       ?= .venv
BASE_IMAGE ?= python:3.12-slim
# `docker compose` or `docker-compose` (scripts/ensure-compose.sh installs one
# where neither answers), run in the recipes below with this project name.
COMPOSE_PROJECT ?= tarea
BIN        := $(VENV)/bin
# requirements/: what `make venv`, the server image and CI install (`make lock`).
LOCK       := requirements/lock.txt
DEV_LOCK   := requirements/dev-lock.txt
UV_VERSION ?= 0.13.9
LOCK_TOOLS := build/lock-tools
UV         := $(LOCK_TOOLS)/bin/uv
UV_FLAGS    = --universal --generate-hashes --quiet --custom-compile-command 'make lock' \
              $(if $(LOCK_UPGRADE),--upgrade)
SERVER_URL ?= http://127.0.0.1:8000

.DEFAULT_GOAL := help
.PHONY: help run test check bench venv lock engine base_image compose wheels demo_distributed \
        build_server_image build_server_tasks_image up_server down_server \
        restart_server test_docker test_tools clean

help:  ## list the targets
	@grep -E '^[a-z_]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-26s %s\n", $$1, $$2}'

venv: $(VENV)/.installed  ## the virtualenv with tarea and its dev tools, from requirements/dev-lock.txt
$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "tarea: python3-venv is missing; installing it (apt-get)..." >&2; \
	  apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps -e .
	@$(BIN)/pip check >/dev/null || { $(BIN)/pip check; \
	  echo "tarea: $(DEV_LOCK) does not fit pyproject.toml: run make lock" >&2; exit 1; }
	@touch $@

# The locks: every dependency pinned, with its hashes, for every platform and
# Python >= 3.11 (uv's universal resolution). dev-lock.txt (the virtualenv:
# tarea with its server, its dev tools, PostgreSQL) is resolved first; lock.txt
# (the server image: tarea[server] with PostgreSQL) takes the same versions. Pins already there
# are kept; LOCK_UPGRADE=1 moves everything to the newest releases.
lock:  ## pin every dependency (with hashes) in requirements/; LOCK_UPGRADE=1: newest versions
	@$(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install -q uv==$(UV_VERSION)
	$(UV) pip compile pyproject.toml --extra server --extra dev --extra postgres $(UV_FLAGS) -o $(DEV_LOCK)
	$(UV) pip compile pyproject.toml --extra server --extra postgres -c $(DEV_LOCK) $(UV_FLAGS) -o $(LOCK)

engine:  ## a Docker engine that answers (installs and starts one if root on Debian)
	@scripts/ensure-docker.sh

compose:  ## docker compose (installs Debian's docker-compose if root on Debian and none answers)
	@scripts/ensure-compose.sh >/dev/null

base_image: engine  ## the base image, or a local one built from Debian packages
	@scripts/ensure-base-image.sh "$(BASE_IMAGE)" >/dev/null

build_server_tasks_image: engine  ## the standard task image, as tasks_image and task_service
	@base=$$(scripts/ensure-base-image.sh "$(BASE_IMAGE)") && \
	docker build -q --network none -f images/tasks/Dockerfile --build-arg BASE_IMAGE="$$base" \
	  -t tasks_image:latest -t task_service:latest . >/dev/null && \
	echo "tarea: built tasks_image:latest = task_service:latest (FROM $$base)"

build_server_image: engine venv  ## the server image, from requirements/lock.txt (offline: from wheels built here)
	@base=$$(scripts/ensure-base-image.sh "$(BASE_IMAGE)") && offline=0 && \
	rm -rf build/wheels && mkdir -p build/wheels && \
	case "$$base" in tarea-base:*) offline=1; \
	  echo "tarea: building wheels on the host for an offline image build..."; \
	  $(BIN)/pip wheel -q --wheel-dir build/wheels --require-hashes -r $(LOCK) && \
	  $(BIN)/pip wheel -q --wheel-dir build/wheels --no-deps .;; esac && \
	docker build -q -f docker/server.Dockerfile --build-arg BASE_IMAGE="$$base" \
	  --build-arg PIP_OFFLINE=$$offline -t tarea_server:latest . >/dev/null && \
	echo "tarea: built tarea_server:latest (FROM $$base)"

run: venv build_server_tasks_image  ## serve tarea on TAREA_HOST:TAREA_PORT (127.0.0.1:8000)
	@mkdir -p var
	$(BIN)/tarea serve

demo_distributed: venv build_server_tasks_image  ## RabbitMQ, PostgreSQL, an API server and two workers (the second on a second Docker engine); prints how to try it
	@scripts/ensure-packages.sh "make demo_distributed" docker-registry
	$(BIN)/python scripts/demo_distributed.py

test_tools:  ## what the tests drive besides Docker (chromium, chromium-driver, tmux, nodejs, docker-registry); installs what is missing if root on Debian
	@scripts/ensure-packages.sh "make test" chromium chromium-driver tmux nodejs docker-registry

test: venv build_server_tasks_image test_tools  ## the whole test suite, on the real Docker engine
	$(BIN)/pytest

check: venv  ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/mypy tests

bench: venv build_server_tasks_image  ## tarea against its floor, docker run and the seed; writes docs/benchmarks.md (BENCH_QUICK=1: short)
	@base=$$(scripts/ensure-base-image.sh "$(BASE_IMAGE)") && \
	BENCH_BASE_IMAGE="$$base" $(BIN)/python -m bench

up_server: compose build_server_image build_server_tasks_image  ## the server in a container, port 8000
	@docker network inspect app_network >/dev/null 2>&1 || \
	  docker network create --internal app_network >/dev/null
	@compose=$$(scripts/ensure-compose.sh) && echo "$$compose -p $(COMPOSE_PROJECT) up -d" && \
	$$compose -p $(COMPOSE_PROJECT) up -d && \
	for i in $$(seq 1 60); do \
	  curl -fsS $(SERVER_URL)/healthz >/dev/null 2>&1 && { echo "tarea: server up at $(SERVER_URL)"; exit 0; }; \
	  sleep 0.5; done; echo "tarea: server did not answer" >&2; $$compose -p $(COMPOSE_PROJECT) logs; exit 1

down_server: compose  ## stop the server container
	@compose=$$(scripts/ensure-compose.sh) && echo "$$compose -p $(COMPOSE_PROJECT) down" && \
	$$compose -p $(COMPOSE_PROJECT) down

restart_server: down_server up_server  ## stop, rebuild and start the server container

test_docker: up_server venv  ## the seed's test cases against the server in its container
	TAREA_TEST_URL=$(SERVER_URL) $(BIN)/pytest tests/integration/test_seed_contract.py -p no:cacheprovider

clean:  ## remove the virtualenv, build output and local data
	rm -rf $(VENV) build var .mypy_cache .pytest_cache .ruff_cache

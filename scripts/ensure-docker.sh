#!/usr/bin/env bash
# Make sure a Docker engine answers. Where none does and we are root on Debian
# or Ubuntu, install Debian's docker.io and start dockerd in the background
# (there may be no systemd), saying so. Idempotent: does nothing when `docker
# info` already answers.
set -euo pipefail

log_dir=${TAREA_LOG_DIR:-$(pwd)/var/log}

if docker info >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "tarea: no Docker engine answers (docker info failed)." >&2
  echo "tarea: install Docker and start it, or run this as root on Debian/Ubuntu to let tarea do it." >&2
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "tarea: no Docker engine here; installing Debian's docker.io (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

# A machine restored from a snapshot can keep pid files whose numbers now
# belong to other processes (or to none); dockerd then waits for a containerd
# that is not there and gives up. Drop pid files that name no such daemon.
drop_stale_pid() { # file, expected command name
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1" 2>/dev/null || true)
  if [ -z "$pid" ] || [ "$(ps -p "$pid" -o comm= 2>/dev/null)" != "$2" ]; then
    rm -f "$1"
  fi
}

if ! pgrep -x dockerd >/dev/null 2>&1; then
  drop_stale_pid /var/run/docker.pid dockerd
  drop_stale_pid /var/run/docker/containerd/containerd.pid containerd
  mkdir -p "$log_dir"
  echo "tarea: starting dockerd in the background (log: $log_dir/dockerd.log)..." >&2
  nohup dockerd >"$log_dir/dockerd.log" 2>&1 &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "tarea: Docker engine $(docker version --format '{{.Server.Version}}') is up." >&2
    exit 0
  fi
  sleep 0.5
done
echo "tarea: dockerd did not answer within 30 s; see $log_dir/dockerd.log" >&2
exit 1

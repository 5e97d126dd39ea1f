#!/usr/bin/env bash
# Print (on stdout, and nothing else there) the compose command to run:
# `docker compose` (the v2 plugin) where it answers, else `docker-compose`.
# Where neither is there and we are root on Debian/Ubuntu, install Debian's
# `docker-compose` package (v1.29; the v2 plugin is not in bookworm), saying
# so on stderr. Idempotent: does nothing when a compose already answers.
set -euo pipefail

say() { echo "tarea: $*" >&2; }

if docker compose version >/dev/null 2>&1; then
  echo "docker compose"; exit 0
fi
if docker-compose version >/dev/null 2>&1; then
  echo "docker-compose"; exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "no docker compose here (neither 'docker compose' nor 'docker-compose' answers)."
  say "install one (Debian: apt-get install docker-compose), or run this as root on Debian/Ubuntu to let tarea do it."
  exit 1
fi

say "no docker compose here; installing Debian's docker-compose (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq docker-compose >/dev/null 2>&1; then
  say "apt-get install failed; running apt-get update and trying again..."
  apt-get update -qq >&2
  apt-get install -y -qq docker-compose >/dev/null
fi
docker-compose version >/dev/null 2>&1 || { say "docker-compose was installed but does not run"; exit 1; }
say "installed $(docker-compose version --short 2>/dev/null || echo docker-compose)."
echo "docker-compose"

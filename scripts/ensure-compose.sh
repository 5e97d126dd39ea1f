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

# Installs it (as root on Debian/Ubuntu) or says what to install; stdout stays ours.
"$(dirname "$0")/ensure-packages.sh" "docker compose" docker-compose >&2
docker-compose version >/dev/null 2>&1 || { say "docker-compose was installed but does not run"; exit 1; }
say "installed $(docker-compose version --short 2>/dev/null || echo docker-compose)."
echo "docker-compose"

#!/usr/bin/env bash
# Print the base image to build tarea's images FROM.
#
# Usage: scripts/ensure-base-image.sh [BASE_IMAGE]
# Uses BASE_IMAGE (default python:3.12-slim) when it is present or can be
# pulled. Otherwise, with no registry reachable, builds (once) a local Python
# base from Debian packages with mmdebstrap and prints its name instead,
# saying so on stderr. Everything but the chosen name goes to stderr.
set -euo pipefail

wanted=${1:-python:3.12-slim}
local_base=${TAREA_LOCAL_BASE:-tarea-base:bookworm}

if docker image inspect "$wanted" >/dev/null 2>&1; then
  echo "$wanted"; exit 0
fi
if [ "$wanted" != "$local_base" ] && timeout 300 docker pull -q "$wanted" >/dev/null 2>&1; then
  echo "$wanted"; exit 0
fi
if docker image inspect "$local_base" >/dev/null 2>&1; then
  [ "$wanted" = "$local_base" ] || echo "tarea: cannot pull $wanted; using the local base $local_base" >&2
  echo "$local_base"; exit 0
fi

echo "tarea: cannot pull $wanted; building the local base $local_base from Debian packages (mmdebstrap, ~1 min)..." >&2
if ! command -v mmdebstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
  else
    echo "tarea: mmdebstrap is missing; install it (apt-get install mmdebstrap) or pass BASE_IMAGE=<a local Python image>" >&2
    exit 1
  fi
fi
mmdebstrap --quiet --variant=essential \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm - | docker import - "$local_base" >/dev/null
echo "tarea: built $local_base" >&2
echo "$local_base"

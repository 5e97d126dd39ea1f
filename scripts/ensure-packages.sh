#!/usr/bin/env bash
# Debian packages a make target drives besides Docker, PostgreSQL and RabbitMQ
# (whose own ensure-*.sh scripts start them): usage `ensure-packages.sh WHY PKG...`.
#   make test_tools: chromium chromium-driver (the dashboard's browser tests),
#     tmux (`tarea run` seen in a real terminal), nodejs (the Node template of
#     `tarea new`), docker-registry (a local registry on 127.0.0.1)
#   make demo_distributed: docker-registry (the second "host" pulls from it)
# Where some are missing and we are root on Debian/Ubuntu, install them with
# apt-get install, saying so on stderr. Idempotent: does nothing when all are there.
set -euo pipefail

say() { echo "tarea: $*" >&2; }

why=$1
shift
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "$why needs these Debian packages, missing here: ${missing[*]}"
  say "install them (apt-get install ${missing[*]}), or run this as root on Debian/Ubuntu to let tarea do it."
  exit 1
fi

say "installing what $why needs, missing here: ${missing[*]} (apt-get install)..."
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
  say "apt-get install failed; running apt-get update and trying again..."
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
say "installed: ${missing[*]}"

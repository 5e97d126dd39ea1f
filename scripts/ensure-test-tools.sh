#!/usr/bin/env bash
# The programs `make test` drives besides Docker, PostgreSQL and RabbitMQ (whose
# own ensure-*.sh scripts the tests call): Debian's packages
#   chromium, chromium-driver  the dashboard's browser tests (tests/integration/test_dashboard.py)
#   tmux                       `tarea run` seen in a real terminal (test_cli.py)
#   nodejs                     the Node template of `tarea new` (test_authoring.py)
#   docker-registry            a local registry on 127.0.0.1 (image cache, second engine)
# Where some are missing and we are root on Debian/Ubuntu, install them with
# apt-get, saying so on stderr. Idempotent: does nothing when all are there.
set -euo pipefail

say() { echo "tarea: $*" >&2; }

packages=(chromium chromium-driver tmux nodejs docker-registry)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  say "the tests need these Debian packages, missing here: ${missing[*]}"
  say "install them (apt-get install ${missing[*]}), or run this as root on Debian/Ubuntu to let tarea do it."
  exit 1
fi

say "installing what the tests drive, missing here: ${missing[*]} (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
  say "apt-get install failed; running apt-get update and trying again..."
  apt-get update -qq >&2
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
say "installed: ${missing[*]}"

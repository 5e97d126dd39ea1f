#!/usr/bin/env bash
# Make sure wrk (the HTTP load generator the benchmark drives) is on the PATH.
# Where it is missing and we are root on Debian or Ubuntu, install Debian's
# wrk package, saying so. Idempotent: does nothing when wrk is there.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "tarea bench: wrk is missing; install it (apt-get install wrk) or run this as root on Debian/Ubuntu." >&2
  exit 1
fi

echo "tarea bench: wrk is missing; installing Debian's wrk (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq wrk >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v wrk >/dev/null 2>&1 || { echo "tarea bench: installing wrk failed" >&2; exit 1; }
echo "tarea bench: installed $(wrk --version 2>&1 | head -n1)" >&2

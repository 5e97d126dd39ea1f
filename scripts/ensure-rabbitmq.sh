#!/usr/bin/env bash
# Print (on stdout, and nothing else there) the AMQP URL of a RabbitMQ broker the
# tests and `tarea worker` may use.
#
# TAREA_TEST_BROKER_URL, when set, is printed as it is. Otherwise, as root on
# Debian/Ubuntu: install Debian's rabbitmq-server if missing, configure it to
# listen on 127.0.0.1 only, with consumer_timeout above the largest task timeout
# (TAREA_MAX_TIMEOUT_S, 3600 s by default, plus an hour), start it by hand (there
# may be no systemd), wait for it, and print amqp://guest:guest@127.0.0.1:5672//
# (RabbitMQ lets `guest` log in from loopback only). Idempotent: a second run
# only checks. Messages go to stderr.
set -euo pipefail

if [ -n "${TAREA_TEST_BROKER_URL:-}" ]; then
  printf '%s\n' "$TAREA_TEST_BROKER_URL"
  exit 0
fi

say() { echo "tarea: $*" >&2; }
die() { say "$*"; exit 1; }

port=5672
url="amqp://guest:guest@127.0.0.1:${port}//"
max_timeout_s=${TAREA_MAX_TIMEOUT_S:-3600}
# Above the longest task: a consumer holding an unacknowledged message longer
# than this loses its channel (and the task its message) otherwise.
consumer_timeout_ms=$(( (${max_timeout_s%.*} + 3600) * 1000 ))

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  die "no TAREA_TEST_BROKER_URL, and setting RabbitMQ up needs root on Debian/Ubuntu;" \
    "set TAREA_TEST_BROKER_URL to a RabbitMQ broker the tests may use."
fi

# 1. The package (the first apt-get install runs without `update`).
if ! command -v rabbitmqctl >/dev/null 2>&1; then
  say "RabbitMQ is not installed; installing Debian's rabbitmq-server (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  # The package's postinst tries to start the service; without systemd it may
  # fail to, which is fine: it is started below.
  if ! apt-get install -y -qq rabbitmq-server >/dev/null 2>&1; then
    say "apt-get install failed; running apt-get update and trying again..."
    apt-get update -qq >&2
    apt-get install -y -qq rabbitmq-server >/dev/null || dpkg -s rabbitmq-server >/dev/null
  fi
fi

# 2. Its configuration: loopback only, and the consumer timeout.
conf=/etc/rabbitmq/rabbitmq.conf
wanted=$(cat <<EOF
# Written by tarea's scripts/ensure-rabbitmq.sh.
listeners.tcp.default = 127.0.0.1:${port}
management.tcp.ip = 127.0.0.1
consumer_timeout = ${consumer_timeout_ms}
EOF
)
mkdir -p /etc/rabbitmq
restart=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$wanted" ]; then
  say "writing ${conf} (127.0.0.1:${port}, consumer_timeout ${consumer_timeout_ms} ms)..."
  printf '%s\n' "$wanted" >"$conf"
  restart=1
fi
# Erlang's ports on loopback too: epmd (4369) and the distribution port (25672).
env_file=/etc/rabbitmq/rabbitmq-env.conf
if ! grep -q '^ERL_EPMD_ADDRESS=127.0.0.1' "$env_file" 2>/dev/null; then
  {
    echo "NODE_IP_ADDRESS=127.0.0.1"
    echo "ERL_EPMD_ADDRESS=127.0.0.1"
    echo "NODENAME=rabbit@localhost"
  } >>"$env_file"
  restart=1
fi
# The Erlang VM's schedulers: RabbitMQ starts them with +sbwt none (never spin
# before sleeping, to spare an idle machine's CPU). Erlang's own default,
# very_short, spins a moment first: a quorum queue hands each message through
# several Erlang processes, and each hand-off that wakes a sleeping scheduler
# costs more than the spin. Measured on a 2-core VM (python -m bench.queue_probe):
# publish to delivery through a quorum queue 1.27 -> 0.88 ms (docs/operations.md).
erl_args='SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt very_short +sbwtdcpu very_short +sbwtdio very_short"'
if ! grep -qxF "$erl_args" "$env_file" 2>/dev/null; then
  sed -i '/^SERVER_ADDITIONAL_ERL_ARGS=/d' "$env_file" 2>/dev/null || true
  echo "$erl_args" >>"$env_file"
  restart=1
fi

# 3. Started by hand: there may be no systemd.
running() { rabbitmqctl -q status >/dev/null 2>&1; }
if running && [ "$restart" = 1 ]; then
  say "restarting RabbitMQ for its new configuration..."
  service rabbitmq-server stop >&2 || rabbitmqctl -q stop >&2 || true
fi
if ! running; then
  say "starting RabbitMQ..."
  service rabbitmq-server start >&2 || true
fi
if ! timeout 60 rabbitmqctl -q await_startup >&2; then
  die "RabbitMQ did not start within 60 s; see /var/log/rabbitmq/"
fi

# 4. The URL works: the port answers on loopback.
ready=0
for _ in $(seq 1 40); do
  if (exec 3<>/dev/tcp/127.0.0.1/${port}) 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.25
done
[ "$ready" = 1 ] || die "RabbitMQ is up but does not answer on 127.0.0.1:${port}"

say "RabbitMQ is up on 127.0.0.1:${port} (consumer_timeout ${consumer_timeout_ms} ms)."
printf '%s\n' "$url"

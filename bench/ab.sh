#!/bin/bash
# Alternate two checkouts of tarea: the warm p50 of ?wait=true suma at one connection.
#
#   bench/ab.sh OLD_DIR NEW_DIR sqlite|pg [PAIRS]     (from the repository, after make bench)
#   bench/ab.sh DIR DIR sqlite-pg [PAIRS]             SQLite (first) against PostgreSQL
#
# For a change too small for make bench's noise: a server from each checkout's
# src/ in turn (a fresh SQLite file, or a fresh schema of the PostgreSQL at
# TAREA_TEST_POSTGRES_URL), TAREA_PREWARM=tasks_image:latest=2, 50 warm-up
# tasks, then wrk at one connection for AB_SECONDS (6); PAIRS (4) rounds, old
# then new, so that a machine slowing down slows both. Prints each round's two
# p50s. Needs wrk and tasks_image:latest (make bench sets both up). A checkout
# of an older commit: git worktree add /tmp/old <commit>. Everything goes to
# 127.0.0.1; what it starts is stopped, and the schema dropped, after each run.
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); kind=$3; pairs=${4:-4}
python=$(pwd)/.venv/bin/python
seconds=${AB_SECONDS:-6}
pg=${TAREA_TEST_POSTGRES_URL:-postgresql+psycopg://tarea:tarea@127.0.0.1:5432/tarea_test}
port=${AB_PORT:-8391}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.path = "/v1/tasks?wait=true"
wrk.body = '{"image":"tasks_image:latest","function":"suma","params":{"a":10,"b":20,"c":5}}'
wrk.headers["Content-Type"] = "application/json"
EOF

schema() {  # schema create|drop NAME
  "$python" - "$pg" "$1" "$2" <<'EOF'
import sys
from sqlalchemy import create_engine, text
url, what, name = sys.argv[1:]
with create_engine(url).begin() as c:
    c.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    if what == "create":
        c.execute(text(f'CREATE SCHEMA "{name}"'))
EOF
}

one() {  # one SRC [sqlite|pg] -> prints the p50
  local src=$1 kind=${2:-$kind} url name="ab_$port"
  if [ "$kind" = pg ]; then
    schema create "$name"
    url="$pg?options=-csearch_path%3D$name"
  else
    rm -f "$work/t.db"*; url="sqlite:///$work/t.db"
  fi
  PYTHONPATH=$src/src TAREA_PORT=$port TAREA_DATABASE_URL=$url TAREA_SERVER_ID=ab-$port \
    TAREA_PREWARM=tasks_image:latest=2 "$python" -m tarea > "$work/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 150); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.2; done
  for _ in $(seq 1 50); do
    curl -s -X POST "http://127.0.0.1:$port/v1/tasks?wait=true" -H 'Content-Type: application/json' \
      -d '{"image":"tasks_image:latest","function":"suma","params":{"a":1}}' >/dev/null
  done
  wrk -t1 -c1 -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port" |
    awk '/ 50%/ {print $2}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
  docker ps -aq --filter "label=io.tarea.server=ab-$port" | xargs -r docker rm -f >/dev/null
  if [ "$kind" = pg ]; then schema drop "$name"; fi
}

echo "round  old ($old)  new ($new), $kind, p50 at 1 connection"
for round in $(seq 1 "$pairs"); do
  if [ "$kind" = sqlite-pg ]; then
    a=$(one "$old" sqlite); b=$(one "$new" pg)
    echo "$round  $a  $b  $(awk -v a="$a" -v b="$b" '
      function ms(t) { return t ~ /us$/ ? t / 1000 : t ~ /ms$/ ? t + 0 : t * 1000 }
      BEGIN { printf "%.2fx", ms(b) / ms(a) }')"
  else
    echo "$round  $(one "$old")  $(one "$new")"
  fi
done

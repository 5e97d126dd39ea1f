#!/usr/bin/env bash
# Print (on stdout, and nothing else there) the SQLAlchemy URL of a PostgreSQL
# database the tests may use.
#
# TAREA_TEST_POSTGRES_URL, when set, is printed as it is. Otherwise, as root on
# Debian/Ubuntu: install Debian's postgresql if missing, start its cluster by
# hand (there may be no systemd), make it listen on 127.0.0.1:5432, create the
# role `tarea` (password `tarea`) and the database `tarea_test` it owns, and
# print postgresql+psycopg://tarea:tarea@127.0.0.1:5432/tarea_test.
# Idempotent: a second run only checks. Messages go to stderr.
set -euo pipefail

if [ -n "${TAREA_TEST_POSTGRES_URL:-}" ]; then
  printf '%s\n' "$TAREA_TEST_POSTGRES_URL"
  exit 0
fi

say() { echo "tarea: $*" >&2; }
die() { say "$*"; exit 1; }

role=tarea
password=tarea
database=tarea_test
port=5432
url="postgresql+psycopg://${role}:${password}@127.0.0.1:${port}/${database}"

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  die "no TAREA_TEST_POSTGRES_URL, and setting PostgreSQL up needs root on Debian/Ubuntu;" \
    "set TAREA_TEST_POSTGRES_URL to a database the tests may use (its role needs CREATE on it)."
fi

# 1. The server packages (the first apt-get install runs without `update`).
if ! command -v pg_lsclusters >/dev/null 2>&1 || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
  say "PostgreSQL is not installed; installing Debian's postgresql (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq postgresql >/dev/null 2>&1; then
    say "apt-get install failed; running apt-get update and trying again..."
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >/dev/null
  fi
fi

# 2. A cluster (the package normally creates `<version> main`).
cluster_line() { pg_lsclusters --no-header 2>/dev/null | awk 'NF >= 4 { print; exit }'; }
if [ -z "$(cluster_line)" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  say "no PostgreSQL cluster; creating ${version}/main..."
  pg_createcluster "$version" main >&2
fi
read -r version cluster cluster_port status _ <<<"$(cluster_line)"

# 3. It must listen on 127.0.0.1:5432.
restart=0
if [ "$cluster_port" != "$port" ]; then
  say "cluster ${version}/${cluster} uses port ${cluster_port}; moving it to ${port}..."
  pg_conftool "$version" "$cluster" set port "$port"
  restart=1
fi
listen=$(pg_conftool -s "$version" "$cluster" show listen_addresses 2>/dev/null || echo localhost)
case "$listen" in
  *localhost* | *127.0.0.1* | *'*'* | *0.0.0.0*) ;;
  *)
    say "cluster ${version}/${cluster} listens on '${listen}'; adding localhost..."
    pg_conftool "$version" "$cluster" set listen_addresses "localhost"
    restart=1
    ;;
esac

# 4. Started by hand: there may be no systemd.
case "$status" in
  online*)
    if [ "$restart" = 1 ]; then
      say "restarting cluster ${version}/${cluster}..."
      pg_ctlcluster "$version" "$cluster" restart >&2
    fi
    ;;
  *)
    say "starting PostgreSQL cluster ${version}/${cluster}..."
    pg_ctlcluster "$version" "$cluster" start >&2
    ;;
esac

ready=0
for _ in $(seq 1 60); do
  if pg_isready -q -h 127.0.0.1 -p "$port"; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  die "PostgreSQL did not answer on 127.0.0.1:${port} within 30 s;" \
    "see /var/log/postgresql/postgresql-${version}-${cluster}.log"
fi

# 5. The role and the database it owns.
as_postgres() {
  runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres "$@"
}
if [ -z "$(as_postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '${role}'")" ]; then
  say "creating role ${role}..."
  as_postgres -c "CREATE ROLE ${role} LOGIN PASSWORD '${password}'" >&2
fi
if [ -z "$(as_postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${database}'")" ]; then
  say "creating database ${database} owned by ${role}..."
  as_postgres -c "CREATE DATABASE ${database} OWNER ${role}" >&2
fi

# 6. The URL works: log in over TCP with the password, as the tests will.
if ! PGPASSWORD="$password" psql -X -q -h 127.0.0.1 -p "$port" -U "$role" -d "$database" \
  -tAc 'SELECT 1' >/dev/null 2>&1; then
  die "cannot log in as ${role} to ${database} on 127.0.0.1:${port} with its password;" \
    "check pg_hba.conf of cluster ${version}/${cluster}."
fi

say "PostgreSQL ${version} is up: database ${database} on 127.0.0.1:${port}."
printf '%s\n' "$url"

#!/bin/sh
# tarea's task protocol in POSIX shell: ready, then one answer per request line,
# until stdin ends (then exit 0). Each line is answered by rpc.awk.
# stdout carries only protocol messages; anything else goes to stderr.
# When tarea asks (TAREA_LOG_MARK=1), a mark goes to stderr before each answer,
# after all the call wrote there, and a "logged" notification says so: the call's
# logs are then whole (docs/protocol.md).
set -u
here=$(dirname "$0")
trap 'exit 0' TERM
mark=false
[ "${TAREA_LOG_MARK:-}" = 1 ] && mark=true
printf '{"jsonrpc":"2.0","method":"ready","params":{"protocol":"tarea/1","functions":["contar_palabras"],"log_mark":%s}}\n' "$mark"
while IFS= read -r line || [ -n "$line" ]; do
  case $line in *[![:space:]]*) ;; *) continue ;; esac   # blank lines are ignored
  printf '%s\n' "$line" | awk -v mark="$mark" -f "$here/rpc.awk" \
    || printf '%s\n' '{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}'
done
exit 0

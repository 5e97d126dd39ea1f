#!/bin/sh
# tarea's task protocol in POSIX shell: ready, then one answer per request line,
# until stdin ends (then exit 0). Each line is answered by rpc.awk.
# stdout carries only protocol messages; anything else goes to stderr.
set -u
here=$(dirname "$0")
trap 'exit 0' TERM
printf '%s\n' '{"jsonrpc":"2.0","method":"ready","params":{"protocol":"tarea/1","functions":["contar_palabras"]}}'
while IFS= read -r line || [ -n "$line" ]; do
  case $line in *[![:space:]]*) ;; *) continue ;; esac   # blank lines are ignored
  printf '%s\n' "$line" | awk -f "$here/rpc.awk" \
    || printf '%s\n' '{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}'
done
exit 0

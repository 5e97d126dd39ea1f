#!/bin/sh
# Tests of {{name}} with no Docker: feed tasks.sh requests, compare its answers.
# Run: sh test.sh   (needs only sh and awk)
set -eu
cd "$(dirname "$0")"
failed=0
expect() { # name, request line, expected answer line (the last line of output)
  got=$(printf '%s\n' "$2" | sh tasks.sh | tail -n 1)
  if [ "$got" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: got $got"; failed=1; fi
}
first=$(printf '' | sh tasks.sh | head -n 1)
[ "$first" = '{"jsonrpc":"2.0","method":"ready","params":{"protocol":"tarea/1","functions":["contar_palabras"],"log_mark":false}}' ] \
  && echo "ok   ready" || { echo "FAIL ready: $first"; failed=1; }
expect count '{"jsonrpc":"2.0","id":1,"method":"contar_palabras","params":{"texto":"uno dos\ntres"}}' \
  '{"jsonrpc":"2.0","id":1,"result":{"palabras":3,"lineas":1}}'
expect unknown '{"jsonrpc":"2.0","id":2,"method":"nada"}' \
  '{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"Unknown function","data":{"function":"nada"}}}'
expect bad-type '{"jsonrpc":"2.0","id":3,"method":"contar_palabras","params":{"texto":1}}' \
  '{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"Invalid params: texto must be a string","data":{"param":"texto","reason":"expected string, got number"}}}'
expect parse-error 'not json' '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}'
progress=$(printf '%s\n' '{"jsonrpc":"2.0","id":4,"method":"contar_palabras","params":{"texto":"a"}}' | sh tasks.sh | grep -c '"method":"progress"')
[ "$progress" -ge 1 ] && echo "ok   progress" || { echo "FAIL progress"; failed=1; }
printf '%s\n' '{"jsonrpc":"2.0","id":5,"method":"rpc.discover"}' | sh tasks.sh | tail -n 1 | grep -q '"name":"contar_palabras"' \
  && echo "ok   discover" || { echo "FAIL discover"; failed=1; }
marks=$(printf '%s\n' '{"jsonrpc":"2.0","id":6,"method":"contar_palabras","params":{"texto":"a"}}' \
  | TAREA_LOG_MARK=1 sh tasks.sh 2>&1 >/dev/null | grep -c 'tarea-log-mark')
[ "$marks" = 1 ] && echo "ok   log mark" || { echo "FAIL log mark: $marks"; failed=1; }
exit $failed

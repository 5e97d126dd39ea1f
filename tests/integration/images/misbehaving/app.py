"""A task container that breaks the protocol on purpose, one way per method.

Written against the raw protocol (not tarea.runtime) so the server's defences
are tested against what an arbitrary image could do.
"""

import json
import sys
import time


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


send(
    {
        "jsonrpc": "2.0",
        "method": "ready",
        "params": {"protocol": "tarea/1", "functions": ["echo", "exit", "garbage", "sleep"]},
    }
)
for line in sys.stdin:
    request = json.loads(line)
    method, params, rid = request["method"], request.get("params") or {}, request["id"]
    if method == "echo":
        send({"jsonrpc": "2.0", "id": rid, "result": params})
    elif method == "exit":
        sys.stderr.write("about to die on purpose\n")
        sys.stderr.flush()
        sys.exit(int(params.get("code", 3)))
    elif method == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
    elif method == "sleep":
        time.sleep(float(params.get("seconds", 60)))
        send({"jsonrpc": "2.0", "id": rid, "result": "slept"})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown"}})

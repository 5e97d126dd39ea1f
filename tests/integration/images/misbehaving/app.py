"""A task container that misbehaves on purpose, one way per method.

Written against the raw protocol (not tarea.runtime) so the server's defences
are tested against what an arbitrary image could do. Standard library only.

Protocol-breaking methods: ``echo``, ``exit``, ``garbage``, ``sleep``,
``lone_surrogate`` (a result string that is not valid Unicode), ``unstorable``
(``what`` no store holds: NaN, U+0000, a raw surrogate, in a result, an error,
a progress or the logs), ``deep`` (a result nested ``levels`` dicts deep).
Attacks on the sandbox (tests/integration/test_hostile.py): ``busy``,
``forkbomb``, ``memhog``, ``stdout_flood``, ``big_result``, ``tmpfill``,
``write_root``, ``network``, ``stderr_flood``, ``whoami``, ``fdlimit``, ``redial``.
Results too big (tests/integration/test_big_results.py): ``big_result_in_memory``.
Attacks on other tenants (tests/integration/test_progress_flood.py): ``progress_flood``.
"""

import contextlib
import errno
import json
import os
import resource
import socket
import sys
import time

MB = 1024 * 1024


def protocol_streams():
    """Where the protocol runs: stdio, or the server's direct channel.

    The server offers the direct channel in TAREA_CHANNEL_SOCKET; this image
    takes it only when built with MISBEHAVE_CHANNEL=direct, so the tests can
    attack both paths.
    """
    path = os.environ.get("TAREA_CHANNEL_SOCKET")
    if os.environ.get("MISBEHAVE_CHANNEL") == "direct" and path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        reader = sock.makefile("rb")
        reader.readline()  # the server's welcome
        return reader, sock.makefile("wb")
    return sys.stdin.buffer, sys.stdout.buffer


PROTO_IN, PROTO_OUT = protocol_streams()


#: When the server asks, every answer is marked (docs/protocol.md, log marks): this
#: mark on stderr, then a ``logged`` notification, then the answer.
LOG_MARK = b"\x1b]tarea-log-mark\x07"
MARKING = os.environ.get("TAREA_LOG_MARK") == "1"


def mark():
    """Mark stderr: what this call wrote there came before its answer."""
    if MARKING:
        sys.stderr.flush()
        os.write(2, LOG_MARK)
        write({"jsonrpc": "2.0", "method": "logged", "params": {}})


def write(message):
    PROTO_OUT.write(json.dumps(message).encode() + b"\n")
    PROTO_OUT.flush()


def send(message):
    if "id" in message:
        mark()
    write(message)


def errno_name(exc):
    """The symbolic errno of an OSError ("EROFS"), or its type when it has none."""
    number = getattr(exc, "errno", None)
    if isinstance(exc, socket.timeout):
        return "TIMEOUT"
    return errno.errorcode.get(number, type(exc).__name__) if number else type(exc).__name__


# -- attacks -----------------------------------------------------------------------


def busy(params):
    """Spin the CPU forever."""
    n = 0
    while True:
        n += 1


def _bomb():
    """Fork forever, in every child too; never returns."""
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.001)  # the pids limit said no: try again


def forkbomb(params):
    """Fork without end (children fork too); the pids limit must stop it."""
    while True:
        try:
            if os.fork() == 0:
                try:
                    _bomb()
                finally:
                    os._exit(0)
        except OSError:
            time.sleep(0.001)


def memhog(params):
    """Allocate 10 MB chunks forever, every page touched."""
    chunk = int(params.get("chunk_mb", 10)) * MB
    hoard = []
    while True:
        hoard.append(b"\xa5" * chunk)  # filled, so every page is really used


def stdout_flood(params):
    """Write lots of non-protocol bytes on the protocol stream (no newline unless asked)."""
    total = int(params.get("mb", 50)) * MB
    piece = (b"A" * 1023 + b"\n") if params.get("lines") else b"A" * 1024
    block = piece * 64
    out = PROTO_OUT
    written = 0
    while written < total:
        out.write(block)
        written += len(block)
    out.flush()
    time.sleep(3600)  # never answer


def big_result(params, rid):
    """Answer a well-formed result whose string is ``mb`` MB long (streamed)."""
    size = int(params.get("mb", 50)) * MB
    out = PROTO_OUT
    mark()
    out.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(rid).encode() + b', "result": "')
    block = b"x" * MB
    for _ in range(size // MB):
        out.write(block)
    out.write(b'"}\n')
    out.flush()


def big_result_in_memory(params, rid):
    """Answer a result string of ``mb`` MB built whole in memory first, as tarea.runtime
    does (it JSON-encodes the whole response, then writes it): the string, its JSON
    and its bytes are held at once, three to four times ``mb`` at the peak."""
    result = "x" * (int(params.get("mb", 50)) * MB)
    line = json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}).encode() + b"\n"
    mark()
    PROTO_OUT.write(line)
    PROTO_OUT.flush()


def progress_flood(params, rid):
    """Send ``n`` progress notifications as fast as the pipe takes them, then answer ``n``.

    The i-th says ``i/n`` and "i of n" (from 1): the last is 1.0, "n of n".
    """
    n = int(params.get("n", 200_000))
    head = b'{"jsonrpc":"2.0","method":"progress","params":{"id":' + json.dumps(rid).encode()
    out = PROTO_OUT
    lines = []
    for i in range(1, n + 1):
        lines.append(b'%s,"progress":%r,"message":"%d of %d"}}\n' % (head, i / n, i, n))
        if len(lines) >= 1000:
            out.write(b"".join(lines))
            lines = []
    out.write(b"".join(lines))
    out.flush()
    send({"jsonrpc": "2.0", "id": rid, "result": n})


def redial(params):
    """Connect to the direct channel's socket a second time; the errno, or "connected"."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.environ.get("TAREA_CHANNEL_SOCKET", "/run/tarea/channel.sock"))
    except OSError as exc:
        return errno_name(exc)
    finally:
        sock.close()
    return "connected"


def tmpfill(params):
    """Write /tmp full; the errno it got and how much it wrote (the file is then removed)."""
    path = "/tmp/tarea-fill"
    block = b"\0" * MB
    written = 0
    error = None
    try:
        with open(path, "wb", buffering=0) as f:
            while True:
                written += f.write(block)
    except OSError as exc:
        error = errno_name(exc)
    stat = os.statvfs("/tmp")
    answer = {"error": error, "bytes": written, "tmp_bytes": stat.f_blocks * stat.f_frsize}
    with contextlib.suppress(OSError):
        os.remove(path)
    return answer


def write_root(params):
    """Try to create files on the root filesystem; the errno of each try."""
    answer = {}
    for path in ("/etc/tarea-was-here", "/tarea-test"):
        try:
            with open(path, "w") as f:
                f.write("pwned\n")
            answer[path] = "created"
        except OSError as exc:
            answer[path] = errno_name(exc)
    return answer


#: Route flags of /proc/net/route and /proc/net/ipv6_route (linux/route.h).
RTF_GATEWAY = 0x0002
RTF_REJECT = 0x0200


def _interfaces():
    """The names of the network interfaces this container has (/proc/net/dev)."""
    with open("/proc/net/dev") as f:
        return sorted(line.split(":", 1)[0].strip() for line in f.readlines()[2:])


def _route(family, iface, destination, prefix, gateway, flags):
    """One route as the test reads it."""
    return {
        "family": family,
        "iface": iface,
        "destination": f"{destination}/{prefix}",
        "gateway": gateway if flags & RTF_GATEWAY else None,
        "reject": bool(flags & RTF_REJECT),
    }


def _routes_v4():
    """Every IPv4 route of the main table (/proc/net/route; header line first)."""
    routes = []
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            iface, dest, gateway, flags, _, _, _, mask = line.split()[:8]
            address = socket.inet_ntoa(bytes.fromhex(dest)[::-1])
            prefix = bin(int.from_bytes(bytes.fromhex(mask), "little")).count("1")
            via = socket.inet_ntoa(bytes.fromhex(gateway)[::-1])
            routes.append(_route("ipv4", iface, address, prefix, via, int(flags, 16)))
    return routes


def _routes_v6():
    """Every IPv6 route of every table (/proc/net/ipv6_route; none if IPv6 is off)."""
    routes = []
    try:
        with open("/proc/net/ipv6_route") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return routes
    for line in lines:
        fields = line.split()
        dest, prefix, gateway, flags, iface = fields[0], fields[1], fields[4], fields[8], fields[9]
        address = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(dest))
        via = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(gateway))
        routes.append(_route("ipv6", iface, address, int(prefix, 16), via, int(flags, 16)))
    return routes


def _loopback_connect():
    """Connect to a port of 127.0.0.1 that is held but never listened on; the errno.

    ECONNREFUSED means the loopback stack answered: loopback is there, and
    only this container's own (no packet leaves it to find out).
    """
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        held.bind(("127.0.0.1", 0))
        s.connect(held.getsockname())
        return "connected"
    except OSError as exc:
        return errno_name(exc)
    finally:
        s.close()
        held.close()


def network(params):
    """What network this container has, read from the inside; nothing is dialled but loopback.

    Its interfaces, its IPv4 and IPv6 routes, what a connect to a closed
    loopback port got, and which Docker sockets exist. No name is resolved
    and no address outside 127.0.0.1 is ever a target.
    """
    return {
        "interfaces": _interfaces(),
        "routes": _routes_v4() + _routes_v6(),
        "loopback_connect": _loopback_connect(),
        "docker_sockets": [
            path for path in ("/var/run/docker.sock", "/run/docker.sock") if os.path.lexists(path)
        ],
    }


def stderr_flood(params):
    """Write ``mb`` MB to stderr in lines of ``line_bytes``, then a last line, then answer."""
    total = int(params.get("mb", 50)) * MB
    width = max(1, int(params.get("line_bytes", 1024)))
    line = b"E" * (width - 1) + b"\n"
    block = line * max(1, 65536 // width)
    err = sys.stderr.buffer
    written = 0
    while written < total:
        err.write(block)
        written += len(block)
    err.write(b"stderr flood: the end\n")
    err.flush()
    return {"bytes": written}


def whoami(params):
    """Who the task runs as, with which privileges, in which environment."""
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in (
                "Uid",
                "Gid",
                "Groups",
                "CapInh",
                "CapPrm",
                "CapEff",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
                "Seccomp",
            ):
                status[key] = value.strip()
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "status": status,
        "environ": sorted(os.environ),
        "path": os.environ.get("PATH"),
    }


def fdlimit(params):
    """Open files until the kernel says no; how many, and the errno."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    opened = []
    error = None
    try:
        while len(opened) < 10_000_000:
            opened.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        error = errno_name(exc)
    count = len(opened)
    for fd in opened:
        os.close(fd)
    return {"count": count, "error": error, "rlimit_soft": soft, "rlimit_hard": hard}


ATTACKS = {
    "busy": busy,
    "forkbomb": forkbomb,
    "memhog": memhog,
    "stdout_flood": stdout_flood,
    "tmpfill": tmpfill,
    "write_root": write_root,
    "network": network,
    "stderr_flood": stderr_flood,
    "whoami": whoami,
    "fdlimit": fdlimit,
    "redial": redial,
}
FUNCTIONS = [
    "echo",
    "exit",
    "garbage",
    "sleep",
    "big_result",
    "big_result_in_memory",
    "progress_flood",
    "deafen",
    "lone_surrogate",
    "unstorable",
    "deep",
    *ATTACKS,
]

# -- the protocol loop ---------------------------------------------------------------

send(
    {
        "jsonrpc": "2.0",
        "method": "ready",
        "params": {"protocol": "tarea/1", "functions": FUNCTIONS, "log_mark": MARKING},
    }
)
for line in PROTO_IN:
    request = json.loads(line)
    method, params, rid = request["method"], request.get("params") or {}, request["id"]
    if method == "echo":
        send({"jsonrpc": "2.0", "id": rid, "result": params})
    elif method == "exit":
        sys.stderr.write("about to die on purpose\n")
        sys.stderr.flush()
        sys.exit(int(params.get("code", 3)))
    elif method == "lone_surrogate":
        # Valid JSON text whose string is not valid Unicode (json.loads takes it).
        mark()
        PROTO_OUT.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(rid).encode())
        PROTO_OUT.write(b', "result": {"s": "\\ud800"}}\n')
        PROTO_OUT.flush()
    elif method == "unstorable":
        # What JSON's syntax (or Python's parser) allows and no store holds, written as raw
        # bytes: json.dumps would refuse or escape some of it.
        what = params.get("what")
        head = b'{"jsonrpc": "2.0", "id": ' + json.dumps(rid).encode()
        if what == "log_nul":  # NUL bytes in the logs, then an ordinary answer
            os.write(2, b"before\x00after\n")
            send({"jsonrpc": "2.0", "id": rid, "result": {"ok": True}})
        elif what == "progress":  # a progress that is NaN, a message holding U+0000
            write({"jsonrpc": "2.0", "method": "progress", "params": {"progress": 0.5}})
            PROTO_OUT.write(b'{"jsonrpc": "2.0", "method": "progress", ')
            PROTO_OUT.write(b'"params": {"progress": NaN, "message": "half\\u0000way"}}\n')
            PROTO_OUT.flush()
            send({"jsonrpc": "2.0", "id": rid, "result": {"ok": True}})
        elif what == "garbage_nul":  # a line that is not JSON, holding NUL
            PROTO_OUT.write(b"\x00not json\n")
            PROTO_OUT.flush()
        else:
            body = {
                "nan": b'"result": {"x": NaN}',
                "infinity": b'"result": [1, -Infinity]',
                "nul": b'"result": {"s": "a\\u0000b"}',
                "nul_key": b'"result": {"k\\u0000": 1}',
                "raw_surrogate": b'"result": {"s": "\xed\xa0\x80"}',
                "error": b'"error": {"code": -32000, "message": "bad\\u0000news", '
                b'"data": {"s": "\\udfff"}}',
            }[what]
            mark()
            PROTO_OUT.write(head + b", " + body + b"}\n")
            PROTO_OUT.flush()
    elif method == "deep":
        # Written by hand: json.dumps would recurse, and give up past ~1,000 levels.
        levels = int(params.get("levels", 600))
        mark()
        PROTO_OUT.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(rid).encode())
        PROTO_OUT.write(b', "result": ' + b'{"a": ' * levels + b"1" + b"}" * levels + b"}\n")
        PROTO_OUT.flush()
    elif method == "garbage":
        PROTO_OUT.write(b"this is not json\n")
        PROTO_OUT.flush()
    elif method == "sleep":
        time.sleep(float(params.get("seconds", 60)))
        send({"jsonrpc": "2.0", "id": rid, "result": "slept"})
    elif method == "big_result":
        big_result(params, rid)
    elif method == "big_result_in_memory":
        big_result_in_memory(params, rid)
    elif method == "progress_flood":
        progress_flood(params, rid)
    elif method == "deafen":
        # Answer, then never read stdin again: the next request is never taken.
        send({"jsonrpc": "2.0", "id": rid, "result": "deaf"})
        while True:
            time.sleep(60)
    elif method in ATTACKS:
        send({"jsonrpc": "2.0", "id": rid, "result": ATTACKS[method](params)})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown"}})

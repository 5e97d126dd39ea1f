"""A task container that misbehaves on purpose, one way per method.

Written against the raw protocol (not tarea.runtime) so the server's defences
are tested against what an arbitrary image could do. Standard library only.

Protocol-breaking methods: ``echo``, ``exit``, ``garbage``, ``sleep``,
``lone_surrogate`` (a result string that is not valid Unicode).
Attacks on the sandbox (tests/integration/test_hostile.py): ``busy``,
``forkbomb``, ``memhog``, ``stdout_flood``, ``big_result``, ``tmpfill``,
``write_root``, ``connect``, ``stderr_flood``, ``whoami``, ``fdlimit``, ``redial``.
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


def send(message):
    PROTO_OUT.write(json.dumps(message).encode() + b"\n")
    PROTO_OUT.flush()


def errno_name(exc):
    """The symbolic errno of an OSError ("EROFS"), or its type when it has none."""
    number = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror):
        return "EAI:" + str(exc)
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
    out.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(rid).encode() + b', "result": "')
    block = b"x" * MB
    for _ in range(size // MB):
        out.write(block)
    out.write(b'"}\n')
    out.flush()


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


def _gateway():
    """The default gateway from /proc/net/route, or None (no route at all)."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == "00000000":
                    return socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    except OSError:
        pass
    return None


def connect(params):
    """Try to reach the outside: TCP, the Docker daemon, DNS; what each attempt got."""
    targets = [("1.1.1.1", 53), ("8.8.8.8", 53), ("172.17.0.1", 2375), ("172.17.0.1", 2376)]
    gateway = _gateway()
    if gateway:
        targets.append((gateway, 2375))
    attempts = []
    for host, port in targets:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((host, port))
            attempts.append({"target": f"{host}:{port}", "ok": True})
        except OSError as exc:
            attempts.append({"target": f"{host}:{port}", "ok": False, "error": errno_name(exc)})
        finally:
            s.close()
    for path in ("/var/run/docker.sock", "/run/docker.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(path)
            attempts.append({"target": path, "ok": True})
        except OSError as exc:
            attempts.append({"target": path, "ok": False, "error": errno_name(exc)})
        finally:
            s.close()
    for name in ("example.com", "host.docker.internal"):
        try:
            found = socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)
            attempts.append({"target": "dns:" + name, "ok": True, "answer": str(found[0][4])})
        except OSError as exc:
            attempts.append({"target": "dns:" + name, "ok": False, "error": errno_name(exc)})
    interfaces = [name for _, name in socket.if_nameindex()]
    return {"attempts": attempts, "gateway": gateway, "interfaces": interfaces}


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
    "connect": connect,
    "stderr_flood": stderr_flood,
    "whoami": whoami,
    "fdlimit": fdlimit,
    "redial": redial,
}
FUNCTIONS = ["echo", "exit", "garbage", "sleep", "big_result", "deafen", "lone_surrogate", *ATTACKS]

# -- the protocol loop ---------------------------------------------------------------

send(
    {
        "jsonrpc": "2.0",
        "method": "ready",
        "params": {"protocol": "tarea/1", "functions": FUNCTIONS},
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
        PROTO_OUT.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(rid).encode())
        PROTO_OUT.write(b', "result": {"s": "\\ud800"}}\n')
        PROTO_OUT.flush()
    elif method == "garbage":
        PROTO_OUT.write(b"this is not json\n")
        PROTO_OUT.flush()
    elif method == "sleep":
        time.sleep(float(params.get("seconds", 60)))
        send({"jsonrpc": "2.0", "id": rid, "result": "slept"})
    elif method == "big_result":
        big_result(params, rid)
    elif method == "deafen":
        # Answer, then never read stdin again: the next request is never taken.
        send({"jsonrpc": "2.0", "id": rid, "result": "deaf"})
        while True:
            time.sleep(60)
    elif method in ATTACKS:
        send({"jsonrpc": "2.0", "id": rid, "result": ATTACKS[method](params)})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown"}})

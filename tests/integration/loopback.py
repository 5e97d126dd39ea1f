"""Unreachable targets that stay on this machine, for tests that need one.

Tests send traffic only to this machine's loopback (127.0.0.0/8, ::1) or to
hosts in network namespaces they make themselves. A name to resolve (even one
under ``.invalid``) or an address elsewhere would have the test itself send
traffic off the machine, through the server or the Docker engine it drives.
So what a test needs to fail (a registry that has no such image, a callback
receiver that is not there) is a port of 127.0.0.1 that this process holds
bound and never listens on: every connect to it is refused at once, and no
other process can take the port while the tests run.
"""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def _hold_a_port() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1 that never listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    return sock


#: Held for the whole test session (never closed): its port stays refused.
_HELD = _hold_a_port()
#: A loopback port nothing listens on, and nothing can while the tests run.
CLOSED_PORT: int = _HELD.getsockname()[1]
#: A registry host where no registry answers: a pull from it fails at once.
NO_REGISTRY = f"{LOOPBACK}:{CLOSED_PORT}"


def absent_image(path: str) -> str:
    """An image reference (``path`` is ``name[:tag]``) that no engine has or can pull.

    Its registry is :data:`NO_REGISTRY`, so trying to pull it never leaves
    the machine (a name with no registry would be pulled from Docker Hub).
    """
    return f"{NO_REGISTRY}/{path}"

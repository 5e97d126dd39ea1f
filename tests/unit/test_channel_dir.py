"""Where direct channels may be made: ChannelDir.for_engine's rules (no Docker needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import tarea.execution.channels as channels_module
from tarea.execution.channels import SOCKET_NAME, ChannelDir, is_local_engine


@pytest.mark.parametrize(
    ("url", "local"),
    [
        (None, True),
        ("unix:///var/run/docker.sock", True),
        ("/var/run/docker.sock", True),
        ("tcp://10.0.0.5:2376", False),
        ("ssh://user@host", False),
    ],
)
def test_only_a_unix_socket_engine_is_local(url: str | None, local: bool) -> None:
    assert is_local_engine(url) is local


def test_a_remote_engine_gets_no_channels_even_with_a_directory(tmp_path: Path) -> None:
    assert ChannelDir.for_engine(tmp_path, "tcp://10.0.0.5:2376") is None


def test_a_new_root_is_made_private(tmp_path: Path) -> None:
    found = ChannelDir.for_engine(tmp_path / "new" / "channels", None)
    assert found is not None
    assert (found.root.stat().st_mode & 0o777) == 0o711


def test_a_root_others_may_write_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert ChannelDir.for_engine(shared, None) is None
    assert (shared.stat().st_mode & 0o7777) == 0o1777


def test_a_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = ChannelDir.for_engine(Path("rel"), None)
    assert found is not None
    assert found.root == tmp_path / "rel"


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    assert ChannelDir.for_engine(tmp_path / "f", None) is None


def test_listen_makes_a_private_socket_and_close_removes_it(tmp_path: Path) -> None:
    root = ChannelDir.for_engine(tmp_path / "channels", None)
    assert root is not None
    listener = root.listen()
    socket_path = listener.directory / "channel.sock"
    assert (listener.directory.stat().st_mode & 0o777) == 0o711
    assert os.path.exists(socket_path)
    listener.close()
    listener.close()  # idempotent
    assert not listener.directory.exists()


# -- leftovers of a killed server, removed at start-up ------------------------------------

#: A server that makes a channel for a container, then is SIGKILLed mid-launch.
KILLED_MID_LAUNCH = """
import os, signal, sys
from pathlib import Path
from tarea.execution.channels import ChannelDir
listener = ChannelDir.for_engine(Path(sys.argv[1]), None).listen()
print(listener.directory, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def start_up(root: Path) -> ChannelDir:
    """What a server starting with TAREA_CHANNEL_DIR=``root`` does with it."""
    found = ChannelDir.for_engine(root, None)
    assert found is not None
    return found


def killed_server_leftover(root: Path) -> Path:
    """The channel directory of a server killed (SIGKILL) while it listened for a container."""
    done = subprocess.run(
        [sys.executable, "-c", KILLED_MID_LAUNCH, str(root)], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    return Path(done.stdout.strip())


def stale_socket_dir(root: Path) -> Path:
    """A channel directory as a killed server leaves it: a socket nobody listens on."""
    directory = Path(tempfile.mkdtemp(prefix="c", dir=root))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(directory / SOCKET_NAME))
    return directory


def test_a_killed_servers_channel_directories_are_removed_at_start_up(tmp_path: Path) -> None:
    """Channel directories left by a SIGKILLed server (socket or not) are gone after start-up."""
    root = start_up(tmp_path / "channels").root
    leftovers = [
        killed_server_leftover(root),
        stale_socket_dir(root),
        Path(tempfile.mkdtemp(prefix="c", dir=root)),  # killed before it bound its socket
    ]
    assert all((d / SOCKET_NAME).exists() for d in leftovers[:2])

    start_up(root)

    assert list(root.iterdir()) == []


def older_tarea_listener(root: Path) -> socket.socket:
    """A channel listening as an older tarea's does: its socket, and no lock on its directory."""
    directory = Path(tempfile.mkdtemp(prefix="c", dir=root))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(directory / SOCKET_NAME))
    sock.listen(1)
    return sock


def test_a_live_listeners_directory_survives_start_up(tmp_path: Path) -> None:
    """Open listeners (this process's, an older tarea's without a lock) keep their directories."""
    channels = start_up(tmp_path / "channels")
    live = channels.listen()
    older = older_tarea_listener(channels.root)
    older_dir = Path(older.getsockname()).parent
    gone = stale_socket_dir(channels.root)
    try:
        start_up(channels.root)
        assert sorted(p.name for p in channels.root.iterdir()) == sorted(
            [live.directory.name, older_dir.name]
        )
        assert gone.name not in os.listdir(channels.root)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(live.directory / SOCKET_NAME))  # still there, still listening
    finally:
        live.close()
        older.close()
    assert channels.remove_leftovers() == [older_dir.name]  # closed now: a leftover
    assert list(channels.root.iterdir()) == []


def test_a_listeners_lock_alone_keeps_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where /proc/net/unix cannot tell (another network namespace), the lock keeps a listener's."""
    channels = start_up(tmp_path / "channels")
    live = channels.listen()
    monkeypatch.setattr(channels_module, "_listened_on", lambda directory_fd: False)
    try:
        assert channels.remove_leftovers() == []
        assert (live.directory / SOCKET_NAME).exists()
    finally:
        live.close()


def test_start_up_removes_nothing_but_channel_directories(tmp_path: Path) -> None:
    """Symlinks, other names and directories holding anything but a socket are left alone."""
    root = start_up(tmp_path / "channels").root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / SOCKET_NAME).write_text("not ours")
    (root / "clinkeddd").symlink_to(outside, target_is_directory=True)
    foreign = Path(tempfile.mkdtemp(prefix="c", dir=root))
    (foreign / "notes.txt").write_text("someone's")
    nested = stale_socket_dir(root)
    (nested / "sub").mkdir()
    other_name = root / "keep-me"
    other_name.mkdir()
    expected = sorted(p.name for p in root.iterdir())

    start_up(root)

    assert sorted(p.name for p in root.iterdir()) == expected
    assert (outside / SOCKET_NAME).read_text() == "not ours"
    assert (foreign / "notes.txt").exists()
    assert (nested / SOCKET_NAME).exists()

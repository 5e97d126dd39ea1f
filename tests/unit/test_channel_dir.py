"""Where direct channels may be made: ChannelDir.for_engine's rules (no Docker needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tarea.engine.channels import ChannelDir, is_local_engine


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

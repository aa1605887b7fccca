"""Files that cannot be backed up are warnings naming the file and the reason, never a crash."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from agents.runtime.engine import ListSink, WalkAhead, chunkers, run_backup
from tests.runtime.engine.conftest import restored
from tests.runtime.engine.helpers import backup, fail_open, restore


def _reasons(result):
    return {w["path"].rsplit("/", 1)[-1]: w["reason"] for w in result.warnings}


def test_it_skips_fifos_sockets_and_devices_with_a_warning(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("ok")
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sink = ListSink()
    result = backup(repo, src, sink=sink)
    sock.close()
    assert result.status == "completed_with_warnings"
    reasons = _reasons(result)
    assert "FIFO" in reasons["pipe"] and "socket" in reasons["sock"]
    assert [w["path"] for w in sink.of_type("warning")] == [w["path"] for w in result.warnings]
    restore(repo, tmp_path / "out")
    assert (restored(tmp_path / "out", src) / "ok").read_text() == "ok"
    assert not (restored(tmp_path / "out", src) / "pipe").exists()


def test_it_warns_about_unreadable_files_and_goes_on(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "secret").write_text("no")
    (src / "fine").write_text("yes")
    fail_open(monkeypatch, b"secret", PermissionError(errno.EACCES, "Permission denied"))
    result = backup(repo, src)
    assert result.status == "completed_with_warnings"
    assert _reasons(result) == {"secret": "permission denied"}
    assert result.files == 1
    restore(repo, tmp_path / "out")
    assert sorted(os.listdir(restored(tmp_path / "out", src))) == ["fine"]


def test_it_warns_about_files_that_vanish_before_they_are_read(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone").write_text("soon")
    fail_open(monkeypatch, b"gone", FileNotFoundError(errno.ENOENT, "No such file"))
    result = backup(repo, src)
    assert "vanished" in _reasons(result)["gone"]


@pytest.mark.parametrize("first", [True, False], ids=["first-backup", "incremental"])
def test_it_warns_about_files_that_change_while_read(repo, tmp_path, monkeypatch, first):
    # A first backup's walk does not lstat files (the open file's fstat is the measure); an
    # incremental one does: either way a file that grows while it is read is a warning.
    src = tmp_path / "src"
    src.mkdir()
    log = src / "growing.log"
    log.write_text("first line\n")
    if not first:
        backup(repo, src)
        log.write_text("first line, rewritten\n")
    original = chunkers.read_xattrs

    def read_xattrs(target):  # the file is open and fstat'ed, its read about to start
        with open(log, "a") as f:  # another program appends while we read
            f.write("more\n")
        return original(target)

    monkeypatch.setattr(chunkers, "read_xattrs", read_xattrs)
    walk = WalkAhead([src], lstat_files=False) if first else None
    result = backup(repo, src, walk=walk)
    assert result.status == "completed_with_warnings"
    assert "changed while it was being read" in _reasons(result)["growing.log"]


def test_it_warns_about_a_missing_source(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    result = run_backup(repo, sources=[src, tmp_path / "nope"], hostname="h")
    assert result.status == "completed_with_warnings"
    assert "does not exist" in _reasons(result)["nope"]

"""A mapped part of a recovery point (System State): a staged folder stored under the reserved
relative path ``system-state/...``, matched across backups by its stored path, browsed as its
own top-level item and restored only when chosen by name."""

from __future__ import annotations

import os

import pytest

from agents.runtime.engine import InvalidArgument, list_dir, run_backup, run_restore
from agents.runtime.engine.paths import stored_path
from tests.runtime.engine.conftest import write_random
from tests.runtime.engine.helpers import log_opens, opened

STATE = "system-state"


def _backup(repo, src, staging):
    return run_backup(
        repo,
        sources=[src],
        mapped={STATE: staging},
        pack_size=256 * 1024,
        hostname="test-host",
    )


def _tree(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_staged_folder_is_stored_under_the_reserved_path_and_only_changes_are_read(
    repo, tmp_path, monkeypatch
):
    src, staging = tmp_path / "src", tmp_path / "cache" / "staging"
    write_random(src / "data.bin", 200_000, 1)
    write_random(staging / "etc" / "big.conf", 1_500_000, 2)
    (staging / "packages.txt").write_text("bash\tinstall\n")
    first = _backup(repo, src, staging)
    assert first.status == "completed", first.warnings
    assert first.files == 3

    top = list_dir(repo, recovery_point="latest", path="/")
    assert [e.path for e in top][-1] == b"system-state"  # beside the disk's top folder
    inside = list_dir(repo, recovery_point="latest", path=STATE)
    assert sorted(e.name for e in inside) == [b"etc", b"packages.txt"]

    # change one staged file: only it is read again, and only its new chunks are stored
    big = bytearray((staging / "etc" / "big.conf").read_bytes())
    big[700_000:700_010] = b"X" * 10
    (staging / "etc" / "big.conf").write_bytes(big)
    log = tmp_path / "logs" / "opens.log"
    log_opens(monkeypatch, log)
    second = _backup(repo, src, staging)
    assert opened(log) == [os.fsencode(staging / "etc" / "big.conf")]
    assert second.files_unchanged == 2
    assert second.new_bytes < 200_000  # a chunk or two, not 1.5 MB

    # System State restores to a folder, byte for byte, and nothing else comes with it
    out = tmp_path / "restored"
    result = run_restore(repo, recovery_point="latest", target=out, paths=[STATE])
    assert result.status == "completed", result.failed
    assert _tree(out / STATE) == _tree(staging)
    assert _tree(out) == {f"{STATE}/{k}": v for k, v in _tree(staging).items()}


def test_a_whole_restore_never_writes_the_reserved_part(repo, tmp_path):
    src, staging = tmp_path / "src", tmp_path / "staging"
    write_random(src / "a.bin", 10_000, 3)
    write_random(staging / "etc" / "hosts", 1_000, 4)
    _backup(repo, src, staging)
    out = tmp_path / "everything"
    run_restore(repo, recovery_point="latest", target=out)
    assert not (out / STATE).exists()
    assert any(p.name == "a.bin" for p in out.rglob("*"))


def test_a_missing_staged_folder_is_a_warning_not_a_failed_backup(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "a.bin", 10_000, 5)
    result = _backup(repo, src, tmp_path / "never-made")
    assert result.status == "completed_with_warnings" and result.recovery_point
    assert result.warnings[0]["path"] == STATE
    assert "cannot read the staged folder" in result.warnings[0]["reason"]


def test_reserved_paths_cannot_escape_or_be_made_up():
    assert stored_path("system-state/etc//hosts") == b"system-state/etc/hosts"
    with pytest.raises(InvalidArgument):
        stored_path("system-state/../../etc/passwd")
    with pytest.raises(InvalidArgument):
        stored_path("etc/passwd")  # relative, and not a reserved part


def test_restoring_system_state_from_a_point_without_it_says_so(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "a.bin", 10_000, 6)
    run_backup(repo, sources=[src], hostname="test-host")
    result = run_restore(repo, recovery_point="latest", target=tmp_path / "out", paths=[STATE])
    assert result.status == "completed_with_warnings" and result.files == 0
    assert "it holds no System State" in result.warnings[0]["reason"]


def test_the_agent_refuses_to_restore_system_state_over_root_or_etc(repo, tmp_path):
    from agents.runtime.recovery import ops

    for target in ("/", "/etc", "/etc/../etc/ssh"):
        with pytest.raises(InvalidArgument, match="System State cannot be restored into"):
            ops.restore(repo, recovery_point="latest", paths=[STATE], target=target)


@pytest.mark.parametrize(
    "path", [b"system-state/../../escape", b"system-state/a/../../../escape", b"system-state//x"]
)
def test_a_hostile_system_state_path_is_refused_and_nothing_escapes(repo, tmp_path, path):
    from agents.runtime.engine.format import DIR, FILE, Entry
    from tests.runtime.engine.helpers import craft_recovery_point

    data = b"pwned"
    cid = repo.chunk_id(data)
    rp = craft_recovery_point(
        repo,
        [
            Entry(path=b"system-state", kind=DIR, mode=0o700),
            Entry(path=path, kind=FILE, mode=0o644, size=5, content=[(cid, 5)]),
        ],
        chunks=[data],
    )
    target = tmp_path / "t" / "target"
    result = run_restore(repo, recovery_point=rp, target=target, paths=[STATE])
    assert result.files == 0
    assert len(result.failed) == 1 and "refusing" in result.failed[0]["reason"]
    assert not list((tmp_path / "t").rglob("escape")) and not (tmp_path / "escape").exists()

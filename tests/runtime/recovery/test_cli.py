"""``haven-agent`` recovery commands, end to end over real repositories in directories."""

from __future__ import annotations

import _thread
import argparse
import json
import os
import signal
import stat

import pytest

from agents.runtime.engine.layout import pack_blob
from agents.runtime.recovery import cli
from tests.runtime.engine.helpers import after_files_restored, pack_of_file, slow_link
from tests.runtime.recovery.conftest import (
    OTHER_ID,
    OTHER_PASSPHRASE,
    OWN_ID,
    backup,
    write_random,
)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="haven-agent")
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def run_json(capsys, *argv: str):
    assert run(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


pytestmark = pytest.mark.usefixtures("agent_config", "portal")


def test_recovery_points_lists_newest_first_with_sizes(backed_up, capsys):
    first, second = backed_up
    assert run("recovery-points") == 0
    out = capsys.readouterr().out
    assert "Recovery points of web-01 (newest first)" in out
    assert out.index(second.recovery_point[:8]) < out.index(first.recovery_point[:8])
    assert "KB" in out  # sizes for people
    data = run_json(capsys, "recovery-points")
    assert [p["id"] for p in data["recovery_points"]] == [
        second.recovery_point,
        first.recovery_point,
    ]


def test_ls_lists_folders_first_then_files(backed_up, tree, capsys):
    assert run("ls", "latest", tree) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{tree} in recovery point")
    names = [line.split()[-1] for line in lines[2:]]
    assert names[:3] == ["docs/", "empty/", "photos/"]
    assert "notes-link -> docs/notes.txt" in out
    data = run_json(capsys, "ls", backed_up[0].recovery_point[:6], tree / "docs")
    assert {e["name"]: e["size"] for e in data["entries"]} == {
        "notes.txt": len(b"first version\n"),
        "report.pdf": 120_000,
    }


def test_find_matches_part_of_a_name_in_any_case_across_points(backed_up, tree, capsys):
    data = run_json(capsys, "find", "NOTES")
    paths = [m["entry"]["path"] for m in data["matches"]]
    assert paths == [str(tree / "docs" / "notes.txt"), str(tree / "notes-link")]
    assert len(data["matches"][0]["recovery_points"]) == 2
    data = run_json(capsys, "find", "*.jpg")
    assert sorted(os.path.basename(m["entry"]["path"]) for m in data["matches"]) == [
        "cat.jpg",
        "dog.jpg",
    ]
    assert run("find", "nothing-like-this") == 0
    assert "Nothing named like" in capsys.readouterr().out


def test_versions_lists_each_version_and_any_one_restores(backed_up, tree, tmp_path, capsys):
    notes = tree / "docs" / "notes.txt"
    data = run_json(capsys, "versions", notes)
    sizes = [v["entry"]["size"] for v in data["versions"]]
    assert sizes == [len(b"second version, longer\n"), len(b"first version\n")]
    assert all(v["changed"] for v in data["versions"])
    oldest = data["versions"][-1]["recovery_point"]
    assert run("restore", oldest, notes, "--target", tmp_path / "v") == 0
    assert (tmp_path / "v" / notes.relative_to("/")).read_bytes() == b"first version\n"


def _restored(target, path):
    return target / path.relative_to("/")


def test_restore_a_folder_into_another_folder(backed_up, tree, tmp_path, capsys):
    target = tmp_path / "restore"
    assert run("restore", "latest", tree / "photos", "--target", target) == 0
    out = capsys.readouterr().out
    assert "Restored 2 files" in out and str(target) in out
    got = _restored(target, tree / "photos")
    assert (got / "cat.jpg").read_bytes() == (tree / "photos" / "cat.jpg").read_bytes()
    assert (got / "2024" / "dog.jpg").read_bytes() == (tree / "photos/2024/dog.jpg").read_bytes()
    assert not _restored(target, tree / "docs").exists()
    # Not a terminal: the progress is plain lines, the last with the final figures.
    progress = [line for line in out.splitlines() if line.startswith("restoring: ")]
    assert progress and "2 of 2 files" in progress[-1] and "(100%)" in progress[-1]
    assert "ETA" in progress[-1] and "\r" not in out
    # --json: one document on stdout, progress as JSON lines on stderr.
    assert run("restore", "latest", tree / "photos", "--target", tmp_path / "again", "--json") == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["ok"] is True and doc["files"] == 2 and doc["status"] == "completed"
    events = [json.loads(line) for line in captured.err.splitlines()]
    assert events and events[-1]["type"] == "progress" and events[-1]["count_done"] == 2


@pytest.fixture
def conflicted(backed_up, tree, tmp_path):
    """A target already holding docs/notes.txt with other content."""
    target = tmp_path / "restore"
    existing = _restored(target, tree / "docs" / "notes.txt")
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"edited since the backup\n")
    return target, existing


def test_on_conflict_copy_keeps_both_with_a_numbered_copy(conflicted, tree, capsys):
    target, existing = conflicted
    assert run("restore", "latest", tree / "docs", "--target", target) == 0  # copy: default
    assert existing.read_bytes() == b"edited since the backup\n"
    assert existing.with_name("notes (1).txt").read_bytes() == b"second version, longer\n"
    assert run("restore", "latest", tree / "docs", "--target", target, "--on-conflict", "copy") == 0
    assert existing.with_name("notes (2).txt").read_bytes() == b"second version, longer\n"


def test_on_conflict_overwrite_replaces_the_existing_file(conflicted, tree):
    target, existing = conflicted
    assert (
        run("restore", "latest", tree / "docs", "--target", target, "--on-conflict", "overwrite")
        == 0
    )
    assert existing.read_bytes() == b"second version, longer\n"
    assert sorted(os.listdir(existing.parent)) == ["notes.txt", "report.pdf"]


def test_on_conflict_skip_keeps_the_existing_file(conflicted, tree, capsys):
    target, existing = conflicted
    assert run("restore", "latest", tree / "docs", "--target", target, "--on-conflict", "skip") == 0
    assert "1 existing files kept" in capsys.readouterr().out
    assert existing.read_bytes() == b"edited since the backup\n"
    assert (existing.parent / "report.pdf").stat().st_size == 120_000
    assert sorted(os.listdir(existing.parent)) == ["notes.txt", "report.pdf"]


def test_a_wrong_passphrase_fails_before_anything_is_written(backed_up, tree, tmp_path, capsys):
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the passphrase at all\n")
    target = tmp_path / "never"
    code = run("restore", "latest", tree, "--target", target, "--passphrase-file", wrong)
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the passphrase does not open this repository")
    assert not target.exists()


def test_a_symlinked_parent_in_the_target_is_never_followed(backed_up, tree, tmp_path, capsys):
    target, outside = tmp_path / "restore", tmp_path / "outside"
    outside.mkdir()
    first = tree.relative_to("/").parts[0]
    target.mkdir()
    os.symlink(outside, target / first)  # e.g. <target>/tmp -> somewhere else
    code = run("restore", "latest", tree / "docs", "--target", target)
    assert code == 3
    out = capsys.readouterr().out
    assert "not restored:" in out and "symbolic link" in out
    assert os.listdir(outside) == []


def test_hostile_manifest_names_are_refused_and_nothing_escapes(repo, tmp_path, capsys):
    from tests.runtime.recovery.hostile import craft

    rp = craft(repo, [b"/../escape", b"/a/../../escape2", b"relative", b"/ok/file"])
    target = tmp_path / "deep" / "target"
    assert run("restore", rp, "/", "--target", target) == 3
    out = capsys.readouterr().out
    assert out.count("not restored:") == 3 and "refusing" in out
    assert (target / "ok" / "file").read_bytes() == b"pwned"
    assert not (tmp_path / "deep" / "escape").exists() and not (tmp_path / "escape2").exists()
    assert sorted(os.listdir(tmp_path / "deep")) == ["target"]


def test_a_flipped_byte_fails_only_the_files_that_need_it_and_names_them(
    repo, stores, tmp_path, capsys
):
    data = tmp_path / "data2"
    write_random(data / "a.bin", 200_000, 7)
    backup(repo, data, pack_size=64 * 1024)
    write_random(data / "b.bin", 200_000, 8)
    backup(repo, data, pack_size=64 * 1024)
    # Flip one byte in a pack of the first backup: only a.bin's data lives there.
    name = pack_blob(bytes.fromhex(pack_of_file(repo, data / "a.bin")))
    path = next((tmp_path / "storage" / "own").rglob(name.rsplit("/", 1)[1]))
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x01
    path.write_bytes(bytes(raw))
    target = tmp_path / "restore"
    assert run("restore", "latest", data, "--target", target) == 3
    out = capsys.readouterr().out
    assert f"not restored: {data / 'a.bin'}" in out and "damaged" in out
    assert (target / (data / "b.bin").relative_to("/")).read_bytes() == (
        data / "b.bin"
    ).read_bytes()
    assert not (target / (data / "a.bin").relative_to("/")).exists()


@pytest.fixture
def python_sigint():
    """A person's Ctrl-C reaches a fresh CLI process, where Python's own handler raises
    KeyboardInterrupt; ``interrupt_main`` does nothing when an earlier test in this process
    left SIGINT ignored or handled otherwise (a whole run failed so once)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_cancels_and_keeps_the_finished_files(
    repo, tmp_path, monkeypatch, capsys, python_sigint
):
    data = tmp_path / "many"
    for i in range(20):
        write_random(data / f"f{i:02}", 100_000, i)
    backup(repo, data, pack_size=64 * 1024)
    slow_link(monkeypatch)
    after_files_restored(monkeypatch, 2, _thread.interrupt_main)  # the person presses Ctrl-C
    target = tmp_path / "restore"
    assert run("restore", "latest", data, "--target", target) == 130
    captured = capsys.readouterr()
    assert "cancelling" in captured.err
    assert "cancelled after" in captured.out
    out = target / data.relative_to("/")
    names = sorted(os.listdir(out))
    assert 1 <= len(names) < 20
    for name in names:
        assert (out / name).read_bytes() == (data / name).read_bytes()


def test_another_machines_backups_need_its_passphrase_typed_here(
    other_repo, stores, tmp_path, capsys
):
    data = tmp_path / "db-data"
    write_random(data / "dump.sql", 50_000, 9)
    backup(other_repo, data, hostname="db-01")
    code = run("ls", "latest", data, "--from-machine", "db-01")
    assert code == 1
    assert "haven-agent recovery-passphrase --from-machine 'db-01'" in capsys.readouterr().err

    wrong = tmp_path / "wrong"
    wrong.write_text("definitely the wrong one\n")
    assert run("recovery-passphrase", "--from-machine", "db-01", "--passphrase-file", wrong) == 1
    assert "passphrase does not open" in capsys.readouterr().err
    right = tmp_path / "right"
    right.write_text(OTHER_PASSPHRASE + "\n")
    assert run("recovery-passphrase", "--from-machine", "db-01", "--passphrase-file", right) == 0
    saved = tmp_path / "agent-config" / "recovery-passphrases" / OTHER_ID
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    target = tmp_path / "here"
    assert run("restore", "latest", data, "--from-machine", "db-01", "--target", target) == 0
    restored = target / (data / "dump.sql").relative_to("/")
    assert restored.read_bytes() == (data / "dump.sql").read_bytes()


def test_a_machine_outside_the_vault_is_refused(capsys):
    assert run("recovery-points", "--from-machine", "stranger") == 1
    assert "No such machine in this vault" in capsys.readouterr().err


def test_own_machine_by_id_needs_no_portal_grant(backed_up, portal, capsys):
    run_json(capsys, "recovery-points", "--from-machine", OWN_ID)
    assert not portal.posted("recovery/grant/")


def test_own_name_asks_the_portal_which_machine_it_means(backed_up, portal, capsys):
    # The portal says web-01 is this machine (no other machine ever had the name): its own
    # repository, with its own passphrase.
    answer = run_json(capsys, "recovery-points", "--from-machine", "web-01")
    assert portal.posted("recovery/grant/") == [{"source_machine": "web-01"}]
    assert answer["machine_id"] == OWN_ID and len(answer["recovery_points"]) == 2


def test_own_name_reads_its_own_backups_when_the_portal_is_unreachable(
    backed_up, portal, monkeypatch, capsys
):
    from agents.runtime.portal_api import PortalUnreachable

    def unreachable(path, payload=None):
        raise PortalUnreachable("connection refused")

    monkeypatch.setattr(portal, "post", unreachable)
    monkeypatch.setattr(cli, "renew_grant", lambda registration, portal: None)
    assert run_json(capsys, "recovery-points", "--from-machine", "web-01")["machine_id"] == OWN_ID


def test_a_gone_machine_is_read_by_id_and_a_wrong_passphrase_writes_nothing(
    other_repo, portal, tmp_path, capsys
):
    # db-01 was unregistered; its name has had two machines (the portal lists the other).
    data = tmp_path / "db-data"
    write_random(data / "dump.sql", 50_000, 9)
    backup(other_repo, data, hostname="db-01")
    earlier = {"id": "33333333-3333-3333-3333-333333333333", "state": "Unregistered on 2025-01-02"}
    portal.grant_answers["db-01"] = {
        "grant": {"kind": "test"},
        "machine": {"id": OTHER_ID, "name": "db-01", "unregistered_at": "2026-12-01T10:00:00",
                    "state": "Unregistered on 2026-12-01"},
        "other_machines": [{**earlier, "name": "db-01", "latest_point": None}],
    }  # fmt: skip
    wrong = tmp_path / "wrong"
    wrong.write_text("definitely the wrong one\n")
    target = tmp_path / "here"
    code = run("restore", "latest", data, "--from-machine", "db-01", "--passphrase-file", wrong,
               "--target", target)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and not target.exists()
    assert "passphrase does not open the backups of 'db-01' (Unregistered on 2026-12-01)" in err
    assert "Nothing was restored or written" in err
    assert "2 machines named 'db-01'" in err and earlier["id"] in err
    assert "--from-machine-id ID" in err

    right = tmp_path / "right"
    right.write_text(OTHER_PASSPHRASE + "\n")
    listed = run_json(capsys, "recovery-points", "--from-machine-id", OTHER_ID,
                      "--passphrase-file", right)  # fmt: skip
    assert portal.posted("recovery/grant/")[-1] == {"source_machine_id": OTHER_ID}
    assert listed["machine_id"] == OTHER_ID and len(listed["recovery_points"]) == 1
    assert run("restore", "latest", data, "--from-machine-id", OTHER_ID, "--passphrase-file",
               right, "--target", target) == 0  # fmt: skip
    restored = target / (data / "dump.sql").relative_to("/")
    assert restored.read_bytes() == (data / "dump.sql").read_bytes()


def test_from_machine_and_from_machine_id_are_one_choice():
    with pytest.raises(SystemExit):
        run("recovery-points", "--from-machine", "db-01", "--from-machine-id", OTHER_ID)

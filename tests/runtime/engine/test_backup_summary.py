"""The one line a backup ends with: the job page shows it as its Note, the CLI prints it."""

from __future__ import annotations

from agents.runtime.engine import ListSink
from tests.runtime.engine.conftest import write_random
from tests.runtime.engine.helpers import backup


def test_the_summary_gives_sizes_as_the_portal_does_not_raw_byte_counts(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "a", 3_000_000, 1)
    (src / "notes.txt").write_bytes(b"x" * 38)
    first = backup(repo, src)
    # 3,000,038 bytes: "2.9 MB" on the job page beside it, not "3000038 bytes".
    assert first.message.startswith("backed up 2 files (2.9 MB), 2.9 MB of new data, 0 warnings"), (
        first.message
    )
    (src / "b").write_bytes(b"new file")
    second = backup(repo, src)
    assert "backed up 3 files (2.9 MB)," in second.message, second.message
    assert " bytes of new data," in second.message or " KB of new data," in second.message, (
        second.message
    )


def _progress(sink) -> list[dict]:
    return [e for e in sink.events if e["type"] == "progress"]


def test_an_incremental_backup_never_shows_more_done_than_its_total(repo, tmp_path):
    """An incremental backup starts from the previous point's totals as its estimate; the job
    page of a backup that had gained a 150 MB file ended on "Files 5 of 4, Data 145.9 MB of
    2.9 MB". Done never exceeds the total shown, and a finished backup's totals are what it
    backed up (also when files went away)."""
    src = tmp_path / "src"
    for i in range(4):
        write_random(src / f"f{i}", 1000, i)
    backup(repo, src)
    write_random(src / "big", 3_000_000, 9)

    grown = ListSink()
    backup(repo, src, sink=grown)
    events = _progress(grown)
    for e in events:
        if e["files_total"] is not None:
            assert e["files_done"] <= e["files_total"], e
        if e["bytes_total"] is not None:
            assert e["bytes_done"] <= e["bytes_total"], e
    last = events[-1]
    assert (last["files_done"], last["files_total"]) == (5, 5)
    assert last["bytes_done"] == last["bytes_total"] == 3_004_000

    (src / "big").unlink()
    shrunk = ListSink()
    backup(repo, src, sink=shrunk)
    last = _progress(shrunk)[-1]
    assert (last["files_done"], last["files_total"]) == (4, 4)
    assert last["bytes_total"] == 4000

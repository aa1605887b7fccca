"""The one line a backup ends with: the job page shows it as its Note, the CLI prints it."""

from __future__ import annotations

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

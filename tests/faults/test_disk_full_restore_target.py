"""The restore target's disk fills up: the restore stops with a message naming the target
and the space still needed; the files it finished are complete and kept, no partial file is
left; after space is freed a restore that skips existing files completes, and verify finds
every committed point intact."""

from __future__ import annotations

import pytest

from agents.runtime import engine
from agents.runtime.protocol import CONFLICT_SKIP
from tests.faults._repo_support import (
    FAST_KDF,
    PASSPHRASE,
    Vault,
    digests_of,
    seed_tree,
    small_disk,
    verify_every_point,
)


@pytest.fixture
def vault(azurite):
    made = Vault(azurite)
    yield made
    made.delete()


def test_a_restore_target_disk_that_fills_up_stops_with_the_space_needed(vault, tmp_path):
    data = tmp_path / "data"
    digests = seed_tree(data, files=12, size=256 << 10)  # about 3.5 MiB
    store = vault.open()
    repo = engine.Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    made = engine.run_backup(repo, sources=[data], cache_dir=tmp_path / "cache")
    assert made.status == "completed"

    target = tmp_path / "target"
    with small_disk(target, "1m") as grow:
        repo = engine.Repository.open(store, PASSPHRASE)
        with pytest.raises(engine.TargetFull) as caught:
            engine.run_restore(repo, recovery_point="latest", target=target, writers=2)
        message = str(caught.value)
        assert f"the disk holding the restore target {target} is full" in message, message
        assert "bytes free" in message and "need about" in message and "bytes more" in message
        needed = caught.value.needed
        restored = caught.value.restored
        assert 0 < restored < len(digests) and needed > 0
        assert f"stopped after {restored} files, which are complete and kept" in message
        # what is there is whole: no partial file, no temporary name left behind
        where = target / str(data).lstrip("/")
        kept = digests_of(where)
        assert len(kept) == restored, sorted(kept)
        assert all(digests[name] == digest for name, digest in kept.items())
        assert [p.name for p in where.iterdir() if p.name.startswith(".")] == []
        assert needed >= sum((data / name).stat().st_size for name in digests if name not in kept)

        grow("8m")  # space freed
        again = engine.run_restore(
            repo, recovery_point="latest", target=target, on_conflict=CONFLICT_SKIP, writers=2
        )
        assert again.status == "completed", again.message
        assert again.skipped == restored
        assert digests_of(where) == digests
    assert verify_every_point(store) == [made.recovery_point]
    store.close()

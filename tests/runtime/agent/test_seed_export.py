"""``haven-agent seed export`` and ``agents/runtime/seed.py`` without a portal: what the
command says when it cannot run, and a staging folder that is not this repository's."""

from __future__ import annotations

import json

import pytest

from agents.runtime import cli, seed
from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.engine import Repository
from tests.runtime.engine.conftest import FAST_KDF, PASSPHRASE


def test_seed_export_on_an_unregistered_machine_says_so(tmp_path, capsys):
    assert cli.main(["seed", "export", "--to", str(tmp_path / "seed")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "seed").exists()


def test_a_staging_folder_of_another_repository_is_refused(tmp_path):
    ours, theirs = MemoryStore(), MemoryStore()
    Repository.init(ours, PASSPHRASE, kdf=FAST_KDF)
    Repository.init(theirs, PASSPHRASE, kdf=FAST_KDF)
    staging = LocalDirectoryStore(tmp_path / "seed", create=True)
    repo_id = seed.copy_repository_identity(ours, staging)
    assert json.loads(staging.get("config"))["id"] == repo_id
    assert seed.copy_repository_identity(ours, staging) == repo_id  # again: nothing to do
    with pytest.raises(seed.SeedError, match="another repository"):
        seed.copy_repository_identity(theirs, staging)


def test_a_stray_file_in_the_staging_folder_stops_the_header(tmp_path):
    (tmp_path / "notes.txt").write_text("not a blob")
    with pytest.raises(seed.SeedError, match=r"notes\.txt"):
        seed.staged_blobs(tmp_path)


def test_an_export_without_policy_items_explains(tmp_path):
    with pytest.raises(seed.SeedError, match="no items"):
        seed.seed_export(
            container=MemoryStore(),
            staging=tmp_path / "seed",
            passphrase=PASSPHRASE,
            items=[],
            excludes=[],
            identity={},
        )

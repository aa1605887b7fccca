"""A fake portal for the agent-side job tests: it answers like the agent API and records
every call. No Django here, like the code under test."""

from __future__ import annotations

import threading

import pytest

FAST_KDF = {"n": 2**10, "r": 8, "p": 1}
PASSPHRASE = "correct horse battery staple 42"


class FakePortal:
    def __init__(self, job: dict):
        self.job = job
        self.calls: list[tuple[str, str, dict | None]] = []
        self.progress: list[dict] = []
        self.result: dict | None = None
        self.cancel_after: int | None = None  # answer {"cancel": true} after N progress posts
        self.fail_progress = False
        self.lock = threading.Lock()

    def get(self, path: str) -> dict:
        with self.lock:
            self.calls.append(("GET", path, None))
        return self.job

    def post(self, path: str, payload: dict | None = None) -> dict:
        with self.lock:
            self.calls.append(("POST", path, payload))
        if path.endswith("/start/"):
            return {"cancel": False, "status": "running"}
        if path.endswith("/progress/"):
            if self.fail_progress:
                raise ConnectionError("portal away")
            with self.lock:
                self.progress.append(payload)
                count = len(self.progress)
            return {"cancel": self.cancel_after is not None and count > self.cancel_after}
        if path.endswith("/result/"):
            self.result = payload
            return {"status": payload["status"]}
        return {"ok": True}


def job_payload(items, **extra) -> dict:
    job = {
        "id": "job-1",
        "operation": "backup",
        "status": "queued",
        "cancel": False,
        "tags": ["adhoc", "job:job-1"],
        "policy": {
            "spec": {"items": items, "exclude_globs": ["*.tmp"], "exclude_types": [".iso"]},
            "version": 1,
            "spec_hash": "h",
        },
        "min_cache_free_bytes": 1024,
    }
    job.update(extra)
    return job


@pytest.fixture
def data(tmp_path):
    """A small tree from a fixed seed, with files the policy excludes."""
    import random

    rng = random.Random(6)
    root = tmp_path / "data"
    (root / "docs").mkdir(parents=True)
    for i in range(40):
        (root / "docs" / f"f{i}.bin").write_bytes(rng.randbytes(rng.randint(1_000, 60_000)))
    (root / "skip.tmp").write_bytes(b"temporary")
    (root / "disk.iso").write_bytes(b"image")
    return root


@pytest.fixture
def repo_store():
    from agents.runtime.blobstore.memory import MemoryStore
    from agents.runtime.engine import Repository

    store = MemoryStore()
    Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    return store

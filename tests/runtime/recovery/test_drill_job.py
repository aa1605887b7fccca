"""The restore drill agent task (``haven.agent.drill``) against a fake portal: the evidence
it posts, another machine's backups drilled with that machine's passphrase, and the words of
a drill that cannot start."""

from __future__ import annotations

import os
from collections import namedtuple

import pytest

from agents.runtime import config
from agents.runtime import protocol as wire
from agents.runtime.engine import drill as engine_drill
from agents.runtime.jobs.tasks import drill
from agents.runtime.recovery.source import forget_opened
from agents.runtime.tasks import REGISTRY, AgentContext
from tests.runtime.recovery.conftest import (
    OTHER_ID,
    OTHER_PASSPHRASE,
    FakePortal,
    backup,
    write_random,
)

JOB = "44444444-4444-4444-4444-444444444444"


@pytest.fixture(autouse=True)
def _fresh_cache():
    forget_opened()
    yield
    forget_opened()


@pytest.fixture
def fake() -> FakePortal:
    portal = FakePortal()
    portal.answers[f"jobs/{JOB}/"] = {"status": "queued", "cancel": False}
    portal.answers[f"jobs/{JOB}/start/"] = {"status": "running", "cancel": False}
    return portal


@pytest.fixture
def ctx(agent_config, stores, fake, tmp_path) -> AgentContext:
    return AgentContext(
        registration=config.load_registration(),
        settings=config.Settings(),
        portal=fake,
        extra={"open_store_for": lambda machine_id: stores[machine_id],
               "cache_dir": str(tmp_path / "cache")},
    )  # fmt: skip


def test_the_drill_task_posts_its_evidence_and_leaves_no_copy(ctx, fake, backed_up, tmp_path):
    assert wire.DRILL_TASK in REGISTRY
    _, second = backed_up
    payload = drill(ctx, job_id=JOB, recovery_point=second.recovery_point)
    assert payload["status"] == "completed", payload
    (result,) = fake.posted(f"jobs/{JOB}/result/")
    stats = result["stats"]
    assert set(wire.DRILL_STATS) <= set(stats)
    assert (stats["files"], stats["point_files"], stats["mismatches"]) == (4, 4, 0)
    assert stats["bytes"] == 120_000 + 40_000 + 30_000 + len(b"second version, longer\n")
    assert result["recovery_point_id"] == second.recovery_point
    assert fake.posted(f"jobs/{JOB}/progress/")  # live progress, throttled by the sink
    assert os.listdir(tmp_path / "cache" / "drills") == []


def test_another_machines_backups_are_drilled_with_its_passphrase(ctx, fake, other_repo, tmp_path):
    data = tmp_path / "db"
    write_random(data / "table.bin", 50_000, 9)
    point = backup(other_repo, data).recovery_point
    refused = drill(ctx, job_id=JOB, recovery_point=point, source_machine_id=OTHER_ID)
    assert refused["status"] == "failed" and "recovery-passphrase" in refused["message"]
    forget_opened()
    ctx.extra["passphrases"] = {OTHER_ID: OTHER_PASSPHRASE}
    fake.calls.clear()
    scratch = tmp_path / "scratch"
    payload = drill(ctx, job_id=JOB, recovery_point=point, source_machine_id=OTHER_ID,
                    sample=wire.DRILL_WHOLE, scratch=str(scratch))  # fmt: skip
    assert payload["status"] == "completed" and payload["stats"]["bytes"] == 50_000
    assert os.listdir(scratch) == []


def test_a_drill_that_lacks_space_or_a_proper_folder_says_what_to_do(
    ctx, fake, backed_up, monkeypatch
):
    _, second = backed_up
    payload = drill(ctx, job_id=JOB, recovery_point=second.recovery_point, scratch="tmp/x")
    assert payload["status"] == "failed" and "not an absolute path" in payload["message"]
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(engine_drill.shutil, "disk_usage", lambda p: usage(1, 1, 1000))
    payload = drill(ctx, job_id=JOB, recovery_point=second.recovery_point)
    assert payload["status"] == "failed"
    assert payload["message"].startswith("The restore drill did not start")
    assert "Free space there, lower the drill's cap" in payload["message"]

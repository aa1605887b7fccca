"""The recovery agent tasks against a fake portal: answers, restore and download jobs."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from agents.runtime import config
from agents.runtime import protocol as wire
from agents.runtime.engine.repository import ChunkReader
from agents.runtime.recovery import tasks
from agents.runtime.recovery.jobs import run_restore_job
from agents.runtime.recovery.source import forget_opened
from agents.runtime.tasks import REGISTRY, AgentContext
from tests.runtime.engine.helpers import after_files_restored, pack_of_file, slow_link
from tests.runtime.recovery.conftest import (
    OTHER_ID,
    OTHER_PASSPHRASE,
    FakePortal,
    backup,
    write_random,
)

JOB = "33333333-3333-3333-3333-333333333333"


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
def ctx(agent_config, stores, fake) -> AgentContext:
    return AgentContext(
        registration=config.load_registration(),
        settings=config.Settings(),
        portal=fake,
        extra={"open_store_for": lambda machine_id: stores[machine_id], "inline": True},
    )


def answer(fake: FakePortal, request_id: str) -> dict:
    (body,) = fake.posted(f"recovery/answers/{request_id}/")
    return body


def test_the_tasks_are_registered_under_their_names():
    for name in (wire.RECOVERY_POINTS_TASK, wire.BROWSE_TASK, wire.SEARCH_TASK,
                 wire.VERSIONS_TASK, wire.RESTORE_TASK, wire.DOWNLOAD_TASK):  # fmt: skip
        assert name in REGISTRY


def test_questions_are_answered_to_the_portal_and_return_no_names(ctx, fake, backed_up, tree):
    first, second = backed_up
    assert tasks.points(ctx, request_id="r1") == {"ok": True}
    points = answer(fake, "r1")["result"]["recovery_points"]
    assert [p["id"] for p in points] == [second.recovery_point, first.recovery_point]

    assert tasks.browse(ctx, request_id="r2", recovery_point=second.recovery_point,
                        path=str(tree / "docs")) == {"ok": True}  # fmt: skip
    names = [e["name"] for e in answer(fake, "r2")["result"]["entries"]]
    assert names == ["notes.txt", "report.pdf"]

    tasks.search(ctx, request_id="r3", pattern="cat")
    (match,) = answer(fake, "r3")["result"]["matches"]
    assert match["entry"]["path"] == str(tree / "photos" / "cat.jpg")

    tasks.versions(ctx, request_id="r4", path=str(tree / "docs" / "notes.txt"))
    assert len(answer(fake, "r4")["result"]["versions"]) == 2


def test_another_machine_without_its_passphrase_answers_what_to_do(ctx, fake, other_repo):
    assert tasks.points(ctx, request_id="r1", source_machine_id=OTHER_ID) == {"ok": False}
    body = answer(fake, "r1")
    assert body["code"] == "passphrase_needed"
    assert "haven-agent recovery-passphrase --from-machine 'db-01'" in body["message"]


def test_another_machines_points_with_its_passphrase(ctx, fake, other_repo, tmp_path):
    backup(other_repo, write_random(tmp_path / "db" / "x", 10, 1) and tmp_path / "db")
    ctx.extra["passphrases"] = {OTHER_ID: OTHER_PASSPHRASE}
    tasks.points(ctx, request_id="r1", source_machine_id=OTHER_ID)
    body = answer(fake, "r1")
    assert body["ok"] and body["result"]["machine"] == "db-01"
    assert len(body["result"]["recovery_points"]) == 1


def _restore(ctx, **kw):
    kw.setdefault("recovery_point", "latest")
    kw.setdefault("on_conflict", "copy")
    kw.setdefault("restore_permissions", False)
    return tasks.restore(ctx, job_id=JOB, **kw)


def test_a_restore_job_reports_progress_and_its_result(ctx, fake, backed_up, tree, tmp_path):
    target = tmp_path / "restore"
    payload = _restore(ctx, paths=[str(tree / "photos")], target=str(target))
    assert payload["status"] == "completed"
    assert payload["stats"]["files"] == 2 and payload["stats"]["bytes"] == 70_000
    (result,) = fake.posted(f"jobs/{JOB}/result/")
    assert result["status"] == "completed" and result["message"] == ""
    assert fake.posted(f"jobs/{JOB}/start/") and fake.posted(f"jobs/{JOB}/progress/")
    got = target / (tree / "photos" / "cat.jpg").relative_to("/")
    assert got.read_bytes() == (tree / "photos" / "cat.jpg").read_bytes()


def test_a_job_cancelled_before_it_started_does_nothing(ctx, fake, backed_up, tree, tmp_path):
    fake.answers[f"jobs/{JOB}/"] = {"status": "cancelled", "cancel": True}
    assert _restore(ctx, paths=[str(tree)], target=str(tmp_path / "r")) == {"status": "skipped"}
    assert not (tmp_path / "r").exists()


def test_the_portals_cancel_stops_the_restore_and_keeps_finished_files(
    ctx, fake, repo, tmp_path, monkeypatch
):
    data = tmp_path / "many"
    for i in range(20):
        write_random(data / f"f{i:02}", 100_000, i)
    backup(repo, data)
    original = ChunkReader.read

    def slow(self, cid):
        time.sleep(0.01)
        return original(self, cid)

    monkeypatch.setattr(ChunkReader, "read", slow)
    fake.cancel_after = 2  # the person presses Cancel: the next progress answer says so
    payload = run_restore_job(
        ctx, job_id=JOB, recovery_point="latest", paths=[str(data)],
        target=str(tmp_path / "r"), on_conflict="copy", restore_permissions=False,
        max_per_second=50, heartbeat=0.05,
    )  # fmt: skip
    assert payload["status"] == "cancelled"
    assert "every file restored so far is complete and kept" in payload["message"]
    out = tmp_path / "r" / data.relative_to("/")
    names = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert len(names) < 20
    for name in names:
        assert (out / name).read_bytes() == (data / name).read_bytes()


def test_the_cancel_task_reaches_a_running_restore(ctx, fake, repo, tmp_path, monkeypatch):
    from agents.runtime.jobs.tasks import cancel

    data = tmp_path / "many"
    for i in range(10):
        write_random(data / f"f{i:02}", 100_000, i)
    backup(repo, data, pack_size=64 * 1024)
    slow_link(monkeypatch)
    answers = []
    after_files_restored(monkeypatch, 2, lambda: answers.append(cancel(ctx, job_id=JOB)))
    payload = _restore(ctx, paths=[str(data)], target=str(tmp_path / "r"))
    assert answers == [{"cancelled": True}]
    assert payload["status"] == "cancelled"


def test_a_wrong_passphrase_fails_the_job_before_anything_is_written(
    ctx, fake, backed_up, tree, tmp_path
):
    ctx.extra["passphrase"] = "this is not the passphrase"
    payload = _restore(ctx, paths=[str(tree)], target=str(tmp_path / "never"))
    assert payload["status"] == "failed"
    assert payload["message"].startswith("Nothing was restored: the passphrase")
    assert not (tmp_path / "never").exists()


def test_damaged_data_completes_with_warnings_naming_the_files(ctx, fake, repo, stores, tmp_path):
    from agents.runtime.engine.layout import pack_blob

    data = tmp_path / "data2"
    write_random(data / "a.bin", 200_000, 7)
    backup(repo, data, pack_size=64 * 1024)
    write_random(data / "b.bin", 200_000, 8)
    backup(repo, data, pack_size=64 * 1024)
    name = pack_blob(bytes.fromhex(pack_of_file(repo, data / "a.bin"))).rsplit("/", 1)[1]
    path = next((tmp_path / "storage" / "own").rglob(name))
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x40
    path.write_bytes(bytes(raw))
    payload = _restore(ctx, paths=[str(data)], target=str(tmp_path / "r"))
    assert payload["status"] == "warning"
    assert [w["path"] for w in payload["warnings"]] == [str(data / "a.bin")]
    assert "damaged" in payload["warnings"][0]["reason"]
    assert (tmp_path / "r" / (data / "b.bin").relative_to("/")).exists()


def test_a_download_streams_a_small_archive_to_the_portal(ctx, fake, backed_up, tree):
    payload = tasks.download(
        ctx, job_id=JOB, recovery_point="latest",
        paths=[str(tree / "docs" / "notes.txt"), str(tree / "photos" / "2024")],
    )  # fmt: skip
    assert payload["status"] == "completed" and payload["stats"]["files"] == 2
    body = fake.uploads[f"recovery/downloads/{JOB}/"]
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        notes = tar.extractfile(str(tree / "docs" / "notes.txt").lstrip("/")).read()
    rel = str(tree).lstrip("/")
    assert names == [f"{rel}/docs/notes.txt", f"{rel}/photos/2024", f"{rel}/photos/2024/dog.jpg"]
    assert notes == b"second version, longer\n"


def test_a_download_larger_than_the_limit_is_refused(ctx, fake, backed_up, tree):
    payload = tasks.download(
        ctx, job_id=JOB, recovery_point="latest", paths=[str(tree)], max_bytes=100_000
    )
    assert payload["status"] == "failed"
    assert "Restore it to a folder instead" in payload["message"]
    assert not fake.uploads

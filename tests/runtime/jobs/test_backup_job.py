"""run_backup_job with the real engine on an in-memory store and a fake portal."""

from __future__ import annotations

import pytest

from agents.runtime.jobs import backup, runner
from tests.runtime.jobs.conftest import PASSPHRASE, FakePortal, job_payload


def run(portal, store, tmp_path, **kwargs):
    return backup.run_backup_job(
        "job-1",
        portal=portal,
        open_store=lambda: store,
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
        **kwargs,
    )


def test_a_backup_reports_progress_and_a_result_with_packs(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)]))
    result = run(portal, repo_store, tmp_path)
    assert result["status"] == "completed", result
    assert portal.result == result
    assert (
        result["recovery_point_id"]
        and result["manifest_blob"] == f"snapshots/{result['recovery_point_id']}"
    )
    assert repo_store.exists(result["manifest_blob"])
    assert result["pack_ids"] and all(
        repo_store.exists(f"data/{p[:2]}/{p}") for p in result["pack_ids"]
    )
    assert result["stats"]["files"] == 40  # *.tmp and .iso excluded
    assert portal.progress, "progress was posted"
    assert portal.progress[-1]["files_done"] == 40
    paths = [call[1] for call in portal.calls]
    assert (
        paths[0] == "jobs/job-1/"
        and paths[1] == "jobs/job-1/start/"
        and paths[-1] == "jobs/job-1/result/"
    )


def test_unreadable_files_are_warnings_not_failures(data, repo_store, tmp_path):
    import os

    locked = data / "docs" / "locked.bin"
    locked.write_bytes(b"secret")
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        pytest.skip("running as root: permissions are not enforced")
    portal = FakePortal(job_payload([str(data)]))
    result = run(portal, repo_store, tmp_path)
    assert result["status"] == "warning"
    assert any("locked.bin" in (w["path"] or "") for w in result["warnings"])


def test_cancel_from_the_progress_answer_stops_the_backup(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)]))
    portal.cancel_after = 0
    result = run(portal, repo_store, tmp_path, heartbeat=0.01, max_per_second=100)
    assert result["status"] in ("cancelled", "completed")  # a tiny tree may finish first
    if result["status"] == "cancelled":
        assert result["recovery_point_id"] is None


def test_a_wrong_passphrase_fails_with_a_reason(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)]))
    result = backup.run_backup_job(
        "job-1",
        portal=portal,
        open_store=lambda: repo_store,
        passphrase="wrong",
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
    )
    assert result["status"] == "failed"
    assert "passphrase configured on this machine does not open" in result["message"]


def test_too_little_cache_space_fails_before_touching_storage(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)], min_cache_free_bytes=10**18))
    opened = []
    result = backup.run_backup_job(
        "job-1",
        portal=portal,
        open_store=lambda: opened.append(1),
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
    )
    assert result["status"] == "failed"
    assert f"The cache location {tmp_path / 'cache'} has" in result["message"]
    assert "a backup needs at least" in result["message"]
    assert opened == []


def test_a_stopped_policy_runs_no_backup_and_policy_show_says_so(data, repo_store, tmp_path):
    """Protection stopped in the portal: the policy the agent holds says so, and a backup
    message that still arrives (sent before the stop) fails without touching storage."""
    from agents.runtime import protocol
    from agents.runtime.jobs import policy

    job = job_payload([str(data)])
    job["policy"]["spec"][protocol.POLICY_PROTECTION] = protocol.PROTECTION_STOPPED
    opened = []
    result = backup.run_backup_job(
        "job-1",
        portal=FakePortal(job),
        open_store=lambda: opened.append(1),
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
    )
    assert result["status"] == "failed" and opened == []
    assert "Protection of this machine is stopped" in result["message"]
    policy.apply_policy(
        tmp_path / "cfg", FakePortal({}), policy=job["policy"]["spec"], version=2, spec_hash="s"
    )
    text = policy.format_policy(policy.load_policy(tmp_path / "cfg"))
    assert "Protection stopped in the portal: no backups run" in text


def test_a_job_cancelled_before_it_started_is_skipped(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)], status="cancelled", cancel=True))
    assert run(portal, repo_store, tmp_path) == {"status": "skipped"}
    assert portal.result is None


def test_the_result_is_retried_while_the_portal_is_away(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)]))
    original = portal.post
    failures = {"left": 2}

    def flaky(path, payload=None):
        if path.endswith("/result/") and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("portal restarting")
        return original(path, payload)

    portal.post = flaky
    result = run(portal, repo_store, tmp_path)
    assert portal.result == result


def test_the_cancel_task_reaches_a_running_job():
    import threading

    event = threading.Event()
    runner.RUNNING["job-9"] = event
    try:
        assert runner.cancel_job("job-9") and event.is_set()
    finally:
        runner.RUNNING.pop("job-9")
    assert runner.cancel_job("job-404") is False


def test_policy_is_stored_for_policy_show(tmp_path):
    from agents.runtime.jobs import policy

    portal = FakePortal({})
    spec = {
        "items": ["/srv"],
        "frequency": "daily",
        "times": ["00:00"],
        "retention": {"daily": {"days": 7}},
    }
    policy.apply_policy(tmp_path / "cfg", portal, policy=spec, version=3, spec_hash="abc123")
    text = policy.format_policy(policy.load_policy(tmp_path / "cfg"))
    assert "Policy version 3" in text and "/srv" in text and "daily at 00:00" in text
    assert portal.calls[-1] == (
        "POST",
        "jobs/policy/applied/",
        {"version": 3, "spec_hash": "abc123"},
    )


def test_a_bandwidth_limit_makes_packs_of_about_a_second_of_upload():
    assert backup.pack_size_for(0) is None  # the engine's default
    assert backup.pack_size_for(2 * 2**20) == 2 * 2**20
    assert backup.pack_size_for(128 * 2**10) == 2**20
    assert backup.pack_size_for(10 * 2**30) == 16 * 2**20


def test_the_pack_size_reaches_the_engine(data, tmp_path):
    from agents.runtime.blobstore.memory import MemoryStore
    from agents.runtime.engine import Repository
    from tests.runtime.jobs.conftest import FAST_KDF

    stores = [MemoryStore(), MemoryStore()]
    for store in stores:
        Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    big = run(FakePortal(job_payload([str(data)])), stores[0], tmp_path / "one")
    small = run(
        FakePortal(job_payload([str(data)])), stores[1], tmp_path / "two", pack_size=64 << 10
    )
    assert big["status"] == small["status"] == "completed"
    # one pack per worker and one of metadata at the default size; many at 64 KiB
    assert len(big["pack_ids"]) <= 3 < len(small["pack_ids"])


def test_a_policy_with_system_state_collects_it_into_the_point_and_warns_of_what_failed(
    data, repo_store, tmp_path, monkeypatch
):
    from agents.runtime import protocol, sysstate
    from agents.runtime.engine import Repository, list_dir

    etc = tmp_path / "machine-etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    places = sysstate.Places(etc=etc, cron=tmp_path / "no-cron", fstab=etc / "fstab",
                             shadow=etc / "shadow", os_release=etc / "os-release")  # fmt: skip
    monkeypatch.setattr(sysstate, "Places", lambda: places)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no command exists here
    payload = job_payload([str(data)])
    payload["policy"]["spec"][protocol.POLICY_SYSTEM_STATE] = True
    result = run(FakePortal(payload), repo_store, tmp_path)
    assert result["status"] == "warning", result  # "Completed with warnings", not failed
    reasons = [w["reason"] for w in result["warnings"]]
    assert any("`dpkg" not in r and "neither dpkg nor rpm is installed" in r for r in reasons)
    assert any(r.startswith("`getent passwd` not run: getent is not installed") for r in reasons)
    repo = Repository.open(repo_store, PASSPHRASE)
    repo.load_index()
    top = list_dir(repo, recovery_point=result["recovery_point_id"], path="/")
    assert top[-1].path == b"system-state"
    staged = list_dir(repo, recovery_point="latest", path="system-state/etc/ssh")
    assert [e.name for e in staged] == [b"sshd_config"]

    # System State taken out of the policy: no collection, and the staged copy is gone
    result = run(FakePortal(job_payload([str(data)])), repo_store, tmp_path)
    assert result["status"] == "completed"
    assert not (tmp_path / "cache" / backup.SYSTEM_STATE_STAGING).exists()
    repo = Repository.open(repo_store, PASSPHRASE)
    repo.load_index()
    top = list_dir(repo, recovery_point="latest", path="/")
    assert b"system-state" not in [e.path for e in top]


def test_a_staging_folder_that_cannot_be_written_is_a_warning_not_a_failed_backup(
    data, repo_store, tmp_path
):
    from agents.runtime import protocol

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / backup.SYSTEM_STATE_STAGING).write_text("a file where a folder goes")
    payload = job_payload([str(data)])
    payload["policy"]["spec"][protocol.POLICY_SYSTEM_STATE] = True
    result = run(FakePortal(payload), repo_store, tmp_path)
    assert result["status"] == "warning" and result["recovery_point_id"], result
    (warning,) = [w for w in result["warnings"] if w["path"] == "System State"]
    assert any(w["path"] == "system-state" for w in result["warnings"])  # and nothing staged
    assert (
        "could not be written" in warning["reason"] and "holds no System State" in warning["reason"]
    )

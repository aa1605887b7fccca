"""The result outbox: a job's result is on disk before it is posted, posted until the portal
takes it (by a later process too), and a job left by a dead process is reported Failed."""

from __future__ import annotations

import itertools
import json
import stat
import subprocess
import sys

from agents.runtime.jobs import backup
from agents.runtime.jobs.outbox import Outbox, outbox_for_cache
from agents.runtime.portal_api import PortalRefused, PortalUnreachable
from tests.runtime.jobs.conftest import PASSPHRASE, FakePortal, job_payload


class Away(FakePortal):
    """A portal whose result endpoint is unreachable while ``away``."""

    def __init__(self, job):
        super().__init__(job)
        self.away = True
        self.results: list[dict] = []

    def post(self, path, payload=None):
        if path.endswith("/result/"):
            if self.away:
                raise PortalUnreachable("cannot reach the portal: connection refused")
            self.results.append(payload)
        return super().post(path, payload)


def _backup(portal, store, tmp_path, **kwargs):
    return backup.run_backup_job(
        "job-1",
        portal=portal,
        open_store=lambda: store,
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
        **kwargs,
    )


def test_a_result_is_on_disk_private_until_the_portal_takes_it_even_from_a_new_process(
    data, repo_store, tmp_path
):
    portal = Away(job_payload([str(data)]))
    posted = _backup(portal, repo_store, tmp_path)
    assert posted["status"] == "completed" and posted["recovery_point_id"]
    kept = tmp_path / "cache" / "outbox" / "job-1.json"
    assert kept.exists(), "the undelivered result is kept"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    on_disk = json.loads(kept.read_text())
    assert on_disk["state"] == "result" and on_disk["payload"]["pack_ids"] == posted["pack_ids"]

    # A later worker (a new Outbox over the same folder) delivers it once the portal is back.
    later = outbox_for_cache(tmp_path / "cache")
    assert later.flush(portal) == 0  # still away: kept
    assert kept.exists()
    portal.away = False
    later._due.clear()  # its backoff has passed
    assert later.flush(portal) == 1
    assert not kept.exists()
    assert portal.results == [posted]  # the same result, with the same result id
    assert posted["result_id"] == on_disk["result_id"]


def test_each_attempt_of_the_task_posts_the_same_result_id(data, repo_store, tmp_path):
    portal = FakePortal(job_payload([str(data)]))
    seen: list[str] = []
    original = portal.post

    def flaky(path, payload=None):
        if path.endswith("/result/"):
            seen.append(payload["result_id"])
            if len(seen) < 3:
                raise PortalUnreachable("the portal answered 502")
        return original(path, payload)

    portal.post = flaky
    posted = _backup(portal, repo_store, tmp_path)
    assert len(seen) == 3 and len(set(seen)) == 1 and seen[0] == posted["result_id"]
    assert not (tmp_path / "cache" / "outbox" / "job-1.json").exists()


def test_a_refused_result_is_kept_aside_for_the_operator_and_not_posted_again(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    entry = outbox.put("job-7", {"status": "completed", "recovery_point_id": "ab" * 32})
    calls = []

    class Refusing:
        def post(self, path, payload=None):
            calls.append(path)
            raise PortalRefused(409, "point_refused", "that point is not in the repository")

    assert outbox.send(Refusing(), entry) is None
    assert (tmp_path / "outbox" / "job-7.refused.json").exists()
    assert outbox.pending() == [] and outbox.flush(Refusing()) == 0
    assert calls == ["jobs/job-7/result/"]


def test_a_job_left_by_a_killed_process_becomes_a_failed_result_that_says_what_was_kept(
    tmp_path,
):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    outbox = Outbox(tmp_path / "outbox")
    outbox.started("job-r", "restore")
    journal = json.loads((tmp_path / "outbox" / "job-r.json").read_text())
    journal.update(pid=dead.pid, files_done=7)
    (tmp_path / "outbox" / "job-r.json").write_text(json.dumps(journal))
    outbox.started("job-mine", "backup")  # this process's own running job is left alone
    # A journal whose process number now belongs to another process (after a reboot, say).
    outbox.started("job-reused", "download")
    reused = json.loads((tmp_path / "outbox" / "job-reused.json").read_text())
    reused.update(pid=1)
    (tmp_path / "outbox" / "job-reused.json").write_text(json.dumps(reused))

    made = {e.job_id: e for e in outbox.recover_abandoned()}
    assert sorted(made) == ["job-r", "job-reused"]
    assert "Start the download again" in made["job-reused"].payload["message"]
    made = made["job-r"]
    assert made.job_id == "job-r" and made.payload["status"] == "failed"
    assert "stopped while restoring" in made.payload["message"]
    assert "at least 7 file(s) already restored were kept" in made.payload["message"]
    assert "Start the restore again" in made.payload["message"]
    assert sorted(e.job_id for e in outbox.pending()) == ["job-r", "job-reused"]
    assert outbox.get("job-mine").state == "started"


def test_a_result_is_never_replaced_once_kept(tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    first = outbox.put("job-2", {"status": "completed"})
    again = outbox.put("job-2", {"status": "failed", "message": "other"})
    assert again.result_id == first.result_id and again.payload["status"] == "completed"


def test_flush_backs_off_per_result_up_to_five_minutes(tmp_path):
    now = [1000.0]
    outbox = Outbox(tmp_path / "outbox", clock=lambda: now[0])
    outbox.put("job-3", {"status": "completed"})
    tries = []

    class Down:
        def post(self, path, payload=None):
            tries.append(now[0])
            raise PortalUnreachable("connection refused")

    for _ in range(400):  # 400 heartbeats a minute apart... compressed to 10 s each
        outbox.flush(Down())
        now[0] += 10
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[0] == 10 and max(gaps) <= 310 and gaps[-1] >= 300


def test_status_lists_the_results_waiting_for_the_portal(tmp_path, monkeypatch, capsys):
    from agents.runtime import cli, config

    monkeypatch.setenv("HAVEN_AGENT_CONFIG_DIR", str(tmp_path / "agent-config"))
    registration = config.Registration(
        portal_url="http://portal.invalid", portal_public_key="", portal_fingerprint="",
        subscription_id="s", subscription_name="s", resource_group="rg", vault_id="v",
        vault_name="vault", machine_id="m-1", machine_name="web-01", token="hvn_x",
        broker_url="", grant={},
    )  # fmt: skip
    config.save_registration(registration)
    assert cli.main(["configure", "--cache-dir", str(tmp_path / "cache")]) == 0
    outbox = outbox_for_cache(tmp_path / "cache")
    outbox.put("job-5", {"status": "completed"})
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    assert "job job-5 (completed); posted when the portal answers" in capsys.readouterr().out
    assert cli.main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job_results_undelivered"] == [
        {"job_id": "job-5", "status": "completed", "state": "result"}
    ]

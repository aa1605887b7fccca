"""The System State collector: commands run without a shell and with a timeout; a missing,
hanging or failing command is a warning naming it, never an exception; a non-root run says
what it left out; an unchanged collection rewrites nothing."""

from __future__ import annotations

import json
import os
import stat

import pytest

from agents.runtime import sysstate


def _tool(bin_dir, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine of our own: an /etc, a cron spool and a PATH holding only fake tools (each
    test adds or leaves out the ones it needs)."""
    etc = tmp_path / "etc"
    (etc / "systemd" / "system").mkdir(parents=True)
    (etc / "hostname").write_text("web-01\n")
    (etc / "systemd" / "system" / "app.service").write_text("[Service]\nExecStart=/bin/true\n")
    (etc / "os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n')
    (etc / "fstab").write_text("UUID=abc / ext4 defaults 0 1\n")
    (etc / "shadow").write_text("root:$6$hash:19000::::::\n")
    (etc / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    cron = tmp_path / "spool" / "cron"
    (cron / "crontabs").mkdir(parents=True)
    (cron / "crontabs" / "alice").write_text("0 3 * * * /usr/local/bin/report\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, out in {
        "dpkg": "echo 'bash\t\t\t\tinstall'",
        "apt-mark": "echo bash",
        "getent": 'echo "$1:x:0:0:root:/root:/bin/bash"',
        "findmnt": "echo '{\"filesystems\": []}'",
        "lsblk": 'echo \'{"blockdevices": [{"name": "vda", "type": "disk"}]}\'',
        "sfdisk": 'echo "label: gpt # $2"',
    }.items():
        _tool(bin_dir, name, out)
    monkeypatch.setenv("PATH", str(bin_dir))
    places = sysstate.Places(
        etc=etc, cron=cron, fstab=etc / "fstab", shadow=etc / "shadow",
        os_release=etc / "os-release",
    )  # fmt: skip
    return places, bin_dir


def _reasons(collection) -> str:
    return "\n".join(f"{w['path']}: {w['reason']}" for w in collection.warnings)


def test_a_missing_command_is_a_warning_naming_it_and_the_rest_is_collected(machine, tmp_path):
    places, _bin = machine  # no systemctl on this machine
    out = tmp_path / "staging"
    got = sysstate.collect(out, places=places, euid=0)
    assert "`systemctl list-unit-files --state=enabled --no-pager --no-legend` not run: " \
        "systemctl is not installed" in _reasons(got)  # fmt: skip
    assert (out / "etc" / "systemd" / "system" / "app.service").read_text().startswith("[Service]")
    assert os.readlink(out / "etc" / "localtime") == "/usr/share/zoneinfo/UTC"
    assert (out / "packages" / "dpkg-selections.txt").read_text() == "bash\t\t\t\tinstall\n"
    assert (out / "crontabs" / "crontabs" / "alice").exists()
    assert (out / "users" / "passwd").read_text().startswith("passwd:")
    assert (out / "users" / "shadow").exists()  # root: the hashes are in
    assert (out / "disks" / "sfdisk-vda.txt").read_text() == "label: gpt # /dev/vda\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["distribution"]["PRETTY_NAME"] == "Debian 12"
    assert manifest["password_hashes"] == "included"
    rows = {row["name"]: row for row in manifest["items"]}
    assert rows["packages"]["command"] == ["dpkg", "--get-selections"]
    assert rows["packages"]["exit_status"] == 0
    assert rows["systemd units"]["ok"] is False
    assert rows["systemd units"]["error"] == "command not found"
    assert "dpkg --set-selections" in (out / "README.md").read_text()


def test_a_command_that_hangs_is_stopped_at_its_timeout(machine, tmp_path):
    places, bin_dir = machine
    _tool(bin_dir, "systemctl", "exec /bin/sleep 30")
    _tool(bin_dir, "findmnt", "echo 'findmnt: cannot read' >&2; exit 3")
    got = sysstate.collect(tmp_path / "staging", places=places, euid=0, timeout=0.5)
    reasons = _reasons(got)
    assert "`systemctl list-unit-files --state=enabled --no-pager --no-legend` did not " \
        "finish within 0.5 s" in reasons  # fmt: skip
    assert "`findmnt --json` failed (exit status 3): findmnt: cannot read" in reasons
    rows = {row["name"]: row for row in got.manifest["items"]}
    assert rows["mounts"]["exit_status"] == 3
    assert (tmp_path / "staging" / "users" / "group").exists()  # the rest went on


def test_a_non_root_run_says_what_it_left_out(machine, tmp_path):
    places, _bin = machine
    out = tmp_path / "staging"
    got = sysstate.collect(out, places=places, euid=1000)
    reasons = _reasons(got)
    assert "`sfdisk --dump` not run: it needs root" in reasons
    assert "users/ holds no password hashes" in reasons
    assert not (out / "users" / "shadow").exists()
    assert not list((out / "disks").glob("sfdisk-*"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["collected_as_root"] is False
    assert manifest["password_hashes"].startswith("not collected")


def test_an_unchanged_machine_rewrites_nothing_and_what_is_gone_goes(machine, tmp_path):
    places, _bin = machine
    out = tmp_path / "staging"
    sysstate.collect(out, places=places, euid=0)
    hostname, selections = out / "etc" / "hostname", out / "packages" / "dpkg-selections.txt"
    before = (hostname.stat().st_ino, selections.stat().st_mtime_ns, selections.stat().st_ino)
    (places.etc / "systemd" / "system" / "app.service").unlink()
    sysstate.collect(out, places=places, euid=0)
    assert (hostname.stat().st_ino, selections.stat().st_mtime_ns,
            selections.stat().st_ino) == before  # fmt: skip
    assert not (out / "etc" / "systemd" / "system" / "app.service").exists()

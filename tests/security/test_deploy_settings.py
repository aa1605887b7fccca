"""Attacks on a deployment's configuration: the secret key file, HTTPS settings, and
dependencies with known, fixed vulnerabilities."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from tests.portal.test_settings import REPO, manage

LOAD_SETTINGS_WITHOUT_CHMOD = """
import os, pathlib
# Freeze the moment the file is created: whatever mode it has before any later chmod is
# the mode another local user could have opened it with.
pathlib.Path.chmod = lambda *args, **kwargs: None
os.chmod = lambda *args, **kwargs: None
os.umask(0o022)
import portal.settings
"""


def test_another_local_user_never_sees_the_generated_secret_key(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "SECRET_KEY_FILE"}}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SETTINGS_WITHOUT_CHMOD],
        cwd=REPO,
        env={**env, "HAVEN_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key_file = data / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 50
    assert [p.name for p in data.iterdir() if p.name.startswith(".secret_key")] == []


def test_check_deploy_warns_about_nothing_with_haven_https_alone(tmp_path):
    """HSTS, secure cookies, the HTTPS redirect: HAVEN_HTTPS=1 is all an operator sets."""
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env={"HAVEN_HTTPS": "1"}, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def _audit(tmp_path, dependencies) -> subprocess.CompletedProcess:
    report = tmp_path / "audit.json"
    report.write_text(json.dumps({"dependencies": dependencies, "fixes": []}))
    return subprocess.run(
        [sys.executable, "scripts/dependency_audit.py", "--report", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_dependency_with_a_fixed_vulnerability_fails_the_audit(tmp_path):
    vulnerable = {
        "name": "django",
        "version": "5.2.0",
        "vulns": [{"id": "PYSEC-2025-1", "fix_versions": ["5.2.1"], "aliases": []}],
    }
    result = _audit(tmp_path, [vulnerable])
    assert result.returncode == 1
    assert "VULNERABLE: django 5.2.0: PYSEC-2025-1 (fixed in 5.2.1)" in result.stdout


def test_a_vulnerability_without_a_fix_is_listed_but_does_not_fail_the_audit(tmp_path):
    unfixed = {
        "name": "somelib",
        "version": "1.0",
        "vulns": [{"id": "GHSA-xxxx", "fix_versions": [], "aliases": []}],
    }
    clean = {"name": "requests", "version": "2.32.5", "vulns": []}
    result = _audit(tmp_path, [unfixed, clean])
    assert result.returncode == 0, result.stdout
    assert "known, unfixed: somelib 1.0: GHSA-xxxx" in result.stdout

"""The screenshots in docs/img/, taken by the browser tests themselves.

With ``HAVEN_SCREENSHOTS=<dir>`` (``scripts/screenshots.py`` sets it to docs/img) the
browsers open at 1280×800, and each shot named in ``DOCS_SHOTS`` is also written to that
directory under its docs name, as the test takes it: a picture in the docs is a page some
test walked through and checked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DOCS_DIR = os.environ.get("HAVEN_SCREENSHOTS", "")
DESKTOP = {"width": 1280, "height": 800} if DOCS_DIR else {"width": 1440, "height": 900}

# The test's shot name -> the docs picture's name, and the test that takes it.
DOCS_SHOTS: dict[str, tuple[str, str]] = {
    "signin-desktop": (
        "signin",
        "tests/e2e/test_foundation.py::"
        "test_sign_in_create_subscription_and_group_then_a_notification_arrives_live",
    ),
    "home-desktop": (
        "home",
        "tests/e2e/test_foundation.py::test_the_shell_works_on_a_desktop_and_a_phone",
    ),
    "newcomer-vault-create-first-subscription": (
        "vault-create-first-subscription",
        "tests/e2e/test_newcomer.py",
    ),
    "vault-create-basics": ("vault-create", "tests/e2e/test_vaults.py"),
    "vault-backup-configuration": ("storage-redundancy", "tests/e2e/test_vaults.py"),
    "vault-prepare-infrastructure": ("prepare-infrastructure", "tests/e2e/test_vaults.py"),
    "policy-system-state": ("policy-editor", "tests/e2e/test_recovery.py"),
    "job-progress": (
        "backup-job-progress",
        "tests/e2e/test_jobs.py::test_back_up_now_shows_live_progress_until_completed",
    ),
    "recovery-points": ("recovery-points", "tests/e2e/test_recovery.py"),
    "recovery-wizard-another-machine": ("recover-data", "tests/e2e/test_recovery.py"),
}


def copy_to_docs(name: str, path: Path) -> None:
    """Copy a test's shot into the docs directory when it is one of ``DOCS_SHOTS``."""
    if DOCS_DIR and name in DOCS_SHOTS:
        target = Path(DOCS_DIR) / f"{DOCS_SHOTS[name][0]}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def tests_taking_them() -> list[str]:
    """The tests (pytest node ids or files) that take the docs pictures."""
    return sorted({test for _, test in DOCS_SHOTS.values()})

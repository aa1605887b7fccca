"""Take the screenshots in docs/img/ by running the browser tests that walk those pages.

    .venv/bin/python scripts/screenshots.py            # all of them (a few minutes)
    .venv/bin/python scripts/screenshots.py -x         # extra pytest options

The tests run in the environment you give (take them as `make test`'s second pass does, on
PostgreSQL, Redis and Azurite: see docs/development.md) with ``HAVEN_SCREENSHOTS=docs/img``: browsers open
at 1280×800 and each shot listed in ``tests/support/screenshots.py`` (``DOCS_SHOTS``) is
copied to docs/img/ under its docs name as the test takes it. A failing test fails the run
and leaves the pictures it did not reach as they were. With ``optipng`` on the PATH the
PNGs are then optimised losslessly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.screenshots import DOCS_SHOTS, tests_taking_them  # noqa: E402

DOCS_IMG = REPO / "docs" / "img"


def main(extra: list[str]) -> int:
    env = dict(os.environ)
    env["HAVEN_SCREENSHOTS"] = str(DOCS_IMG)
    env.setdefault("HAVEN_DATA_DIR", str(REPO / "var" / "screenshots-run"))
    before = {p: p.stat().st_mtime for p in DOCS_IMG.glob("*.png")}
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *tests_taking_them(),
            *extra,
        ],
        cwd=REPO,
        env=env,
    )
    names = sorted(f"{docs}.png" for docs, _ in DOCS_SHOTS.values())
    taken = [
        n
        for n in names
        if (DOCS_IMG / n).exists() and before.get(DOCS_IMG / n) != (DOCS_IMG / n).stat().st_mtime
    ]
    missing = sorted(set(names) - set(taken))
    optipng = shutil.which("optipng")
    if optipng and taken:
        subprocess.run([optipng, "-quiet", "-o2", *(str(DOCS_IMG / n) for n in taken)], check=True)
    print(
        f"docs/img: {len(taken)} of {len(names)} pictures taken"
        + (" (optipng)" if optipng and taken else "")
    )
    for name in missing:
        print(f"  not taken this run: {name}")
    return tests.returncode or (1 if missing else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

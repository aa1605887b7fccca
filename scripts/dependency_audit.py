"""Audit the installed environment for known vulnerabilities (``make test`` runs it).

Fails (exit 1) on a vulnerability that has a fixed release: bump the dependency. A
vulnerability without a fix is listed but does not fail the run (there is nothing to
upgrade to), and neither does an unreachable vulnerability service (a run without network
still tests the code; the warning says the audit did not happen). The editable project
itself is skipped: it is not on PyPI.

    python scripts/dependency_audit.py            # runs pip-audit on this interpreter's env
    python scripts/dependency_audit.py --report F # judges a saved ``pip-audit -f json`` report
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PIP_AUDIT = [
    sys.executable,
    "-m",
    "pip_audit",
    "--skip-editable",
    "--progress-spinner=off",
    "--format=json",
    "--timeout=20",
]


def judge(report: dict) -> tuple[list[str], list[str], int]:
    """(fixable findings, unfixable findings, dependencies that could not be audited)."""
    fixable, unfixable, skipped = [], [], 0
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            skipped += 1
            continue
        for vuln in dep.get("vulns", []):
            line = f"{dep['name']} {dep['version']}: {vuln['id']}"
            if vuln.get("fix_versions"):
                fixable.append(f"{line} (fixed in {', '.join(vuln['fix_versions'])})")
            else:
                unfixable.append(f"{line} (no fixed release yet)")
    return fixable, unfixable, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, help="a saved pip-audit JSON report to judge")
    args = parser.parse_args(argv)
    if args.report:
        text = args.report.read_text()
    else:
        run = subprocess.run(PIP_AUDIT, capture_output=True, text=True, check=False)
        text = run.stdout
        if not text.strip().startswith("{"):
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"dependency audit: WARNING: not done, the service was unreachable ({last})")
            return 0
    fixable, unfixable, skipped = judge(json.loads(text))
    for line in unfixable:
        print(f"dependency audit: known, unfixed: {line}")
    if skipped:
        print(
            f"dependency audit: WARNING: {skipped} dependencies could not be audited "
            "(not found on the vulnerability service)"
        )
    if fixable:
        for line in fixable:
            print(f"dependency audit: VULNERABLE: {line}")
        print("dependency audit: FAILED: upgrade the dependencies above (pyproject.toml).")
        return 1
    print("dependency audit: no known vulnerability with a fix available")
    return 0


if __name__ == "__main__":
    sys.exit(main())

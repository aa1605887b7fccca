"""The layers: the engine sits on the blob stores and the wire module, below everything else of
the agent; the blob stores know nothing of the engine."""

from __future__ import annotations

import subprocess
import sys

ALL_ENGINE_MODULES = (
    "import importlib, pkgutil, sys, agents.runtime.engine as engine; "
    "[importlib.import_module(f'agents.runtime.engine.{m.name}') "
    " for m in pkgutil.iter_modules(engine.__path__) if m.name != '__main__']; "
)


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_engine_imports_no_django():
    _run(
        "import sys, agents.runtime.engine, agents.runtime.engine.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'portal', 'vaults', 'jobs')]; "
        "assert not bad, bad"
    )


def test_the_engine_imports_nothing_of_the_agent_but_the_blob_stores_and_the_wire():
    # The wire and the sizes in words are leaves. Not the Celery worker, the tasks, the portal client, jobs, recovery or the agent's CLI.
    _run(
        ALL_ENGINE_MODULES + "allowed = ('agents.runtime.engine', 'agents.runtime.blobstore', "
        "'agents.runtime.protocol', 'agents.runtime.sizes'); "
        "bad = [m for m in sys.modules if m.startswith('agents.') and m != 'agents.runtime' "
        "       and not m.startswith(allowed)]; "
        "assert not bad, bad"
    )


def test_the_blob_stores_import_no_engine():
    _run(
        "import importlib, pkgutil, sys, agents.runtime.blobstore as blobstore; "
        "[importlib.import_module(f'agents.runtime.blobstore.{m.name}') "
        " for m in pkgutil.iter_modules(blobstore.__path__)]; "
        "bad = [m for m in sys.modules if m.startswith('agents.runtime.engine')]; "
        "assert not bad, bad"
    )

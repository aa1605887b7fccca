"""Code that runs on a protected machine: the ``haven-agent`` CLI, its Celery worker, the
backup engine and the blob-store backends. Nothing here imports Django (an import-linter
contract in the tests enforces it), so the agent installs without the portal.
"""

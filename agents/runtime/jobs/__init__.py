"""The agent's side of jobs: running a backup the portal asked for and reporting on it.

- ``sink``: ``PortalSink``, the engine's progress sink that posts to the portal at most a
  few times a second (in its own thread, so the engine never waits on the network), keeps
  posting a heartbeat while the engine is quiet, and turns the portal's ``{"cancel": true}``
  answer into the engine's cancel event.
- ``backup``: ``run_backup_job``, fetch the job and policy, check the cache, open the
  repository, run the engine, post the result.
- ``policy``: the applied policy on disk (``haven-agent policy show``) and its report.
- ``tasks``: the ``haven.agent.backup`` / ``.cancel`` / ``.policy`` agent tasks.

No Django here: the portal is reached over its agent API only. Message schema: docs/jobs.md.
"""

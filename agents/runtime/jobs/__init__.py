"""The agent's side of jobs: runs on the enrolled machine, inside its Celery worker.

(Its portal-side twin is the ``jobs`` Django app, which queues jobs, stores their progress and
results, and shows them; this package is what carries a job out.)

- ``runner``: ``run_job``, the one routine every job kind runs in: ask the portal whether the
  job is still wanted, start it, the progress sink, cancel registration (``RUNNING``,
  ``cancel_job``), the words for a failure, and delivering the result (through ``outbox``).
- ``outbox``: the result outbox in the cache: a job's journal while it runs, then its result
  until the portal accepts it (across worker restarts); a killed worker's jobs become Failed.
- ``sink``: ``PortalSink``, the engine's progress sink that posts to the portal at most a
  few times a second (in its own thread, so the engine never waits on the network), keeps
  posting a heartbeat while the engine is quiet, and turns the portal's ``{"cancel": true}``
  answer into the engine's cancel event.
- ``backup``: the backup kind's work: the policy from the job, the cache check, opening the
  repository, running the engine, the result with the recovery point and its packs.
- ``verify``: the verify kind's work (read back and authenticate a slice of the packs and
  every manifest; the damage it finds, named by pack, file and recovery point).
- ``compact``: the compact kind's work: the engine's compaction and the report of what it
  rewrote, which the portal checks before it deletes the old packs.
- ``policy``: the applied policy on disk (``haven-agent policy show``) and its report.
- ``tasks``: the ``haven.agent.backup`` / ``.verify`` / ``.drill`` / ``.compact`` / ``.cancel`` /
  ``.policy`` agent tasks.

No Django here: the portal is reached over its agent API only. The names and shapes both
sides share are in ``agents.runtime.protocol``; the message schema in docs/jobs.md.
"""

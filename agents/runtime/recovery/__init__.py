"""Recovering data on a machine: the agent's side of Recover Data (docs/restore.md). Runs on
the enrolled machine (its portal-side twin is ``jobs.recovery``, the wizard and its API).

No Django here, and no safety logic of its own beyond what the engine already enforces: this
package is a thin layer over ``agents.runtime.engine``'s browse and restore API.

- ``source``: which repository to read (and, for the tasks, keeping it open a while) — this machine's own, or another machine's of the same
  vault (a read-only grant from the portal plus that machine's passphrase, typed here once with
  ``haven-agent recovery-passphrase``) — and opening it.
- ``ops``: recovery points, ls, find, versions, restore and the small download archive, as
  JSON-able answers (the CLI prints them, the tasks send them to the portal).
- ``human``: sizes and times for people.
- ``cli``: ``haven-agent recovery-points | ls | find | versions | restore |
  recovery-passphrase`` (``add_commands(subparsers)``).
- ``jobs``: the restore and download kinds of job, run by ``agents.runtime.jobs.runner``.
- ``tasks``: the ``haven.agent.recovery.*`` agent tasks the portal's wizard sends.
"""

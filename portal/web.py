"""A portal web process: ``python -m portal.web <daphne's arguments>``.

daphne serving ``portal.asgi``, with the garbage collector first set for a long-running
server (``portal.serve.start_web`` starts each web process so):

* what the process loaded to serve (Django, the apps, the URL configuration, the
  templates' libraries) is frozen (``gc.freeze``): it lives as long as the process, and the
  collector no longer walks it at every full collection;
* the youngest generation is collected every ``YOUNG_COLLECTION_EVERY`` allocations instead
  of Python's 700. A request allocates thousands of short-lived objects that reference
  counting frees at once; a collection every 700 of them found almost nothing to free.

Measured in ``bench.load`` (docs/benchmarks.md, "Session 12"): the two web processes spent
1.8 CPU-s of about 33 collecting garbage in a run, and 0.3 CPU-s so.
"""

from __future__ import annotations

import gc

from daphne.cli import CommandLineInterface

import portal.asgi  # noqa: F401  (Django set up and the application loaded before freezing)

YOUNG_COLLECTION_EVERY = 10_000


def settle_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 10, 10)


if __name__ == "__main__":
    settle_collector()
    CommandLineInterface.entrypoint()

"""A portal web process: ``python -m portal.web <daphne's arguments>``.

daphne serving ``portal.asgi``, with the garbage collector first set for a long-running
server (``portal.serve.start_web`` starts each web process so):

* what the process loaded before serving (Django, the apps, the ASGI application and what
  it imports) is frozen (``gc.freeze``): it lives as long as the process, and the
  collector no longer walks it at every full collection;
* the youngest generation is collected every ``YOUNG_COLLECTION_EVERY`` allocations instead
  of Python's 700 (most of a request's short-lived objects are freed by reference counting
  anyway).

Measured in ``bench.load`` (docs/benchmarks.md, "Session 12", one run each): the two web
processes spent 1.8 of ~33 CPU-s collecting garbage on the default settings, 0.3 of ~38 so.
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

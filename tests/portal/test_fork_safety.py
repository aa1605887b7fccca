"""A process forked from one that already ran thread-pooled work (a test's live portal,
forked from the test process; a worker's child) gets threads of its own: work it hands to
an executor runs, instead of waiting for ever on a thread that stayed in the parent.

Each test runs the work once here, forks, and has the child run it again within a few
seconds; the child's exit status is the answer (0 done, 3 still waiting, 4 failed).
"""

from __future__ import annotations

import asyncio
import os
import threading

from asgiref.sync import sync_to_async

from portal.pools import ProcessThreadPool

CHILD_SECONDS = 10


def _run(work):
    """``work()`` (a coroutine function) run to its end on a new event loop, in a thread of
    its own (this one may already run a loop: a browser test's, earlier in the session)."""
    outcome: list = []

    def main():
        try:
            outcome.append(asyncio.run(asyncio.wait_for(work(), CHILD_SECONDS)))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _in_child(work) -> int:
    """The exit status of a forked child that runs ``work`` (a coroutine function)."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        status = 4
        try:
            _run(work)
            status = 0
        except TimeoutError:
            status = 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_runs_what_it_submits_to_a_process_thread_pool():
    pool = ProcessThreadPool(max_workers=2, thread_name_prefix="test-fork")
    run = sync_to_async(threading.current_thread, thread_sensitive=False, executor=pool)
    assert _run(run).name.startswith("test-fork")  # its threads exist, here

    async def work():
        await run()

    try:
        assert _in_child(work) == 0
        assert _run(run).name.startswith("test-fork")  # the parent's still serve
    finally:
        pool.shutdown()


def test_a_forked_child_runs_thread_sensitive_code_outside_a_request():
    # What a websocket consumer's database check does (channels' database_sync_to_async):
    # outside any request it runs on asgiref's one single-thread executor.
    run = sync_to_async(threading.get_ident, thread_sensitive=True)
    _run(run)

    async def work():
        await run()

    assert _in_child(work) == 0


def test_no_portal_module_keeps_a_thread_pool_a_fork_would_break():
    # The next module-level pool, caught before a forked portal hangs on it.
    import importlib
    import pkgutil
    from concurrent.futures import ThreadPoolExecutor

    found = []
    for package in ("portal", "vaults", "agents", "jobs"):
        for module in pkgutil.walk_packages(
            importlib.import_module(package).__path__, prefix=f"{package}."
        ):
            if ".migrations" in module.name or module.name.startswith("agents.runtime"):
                continue  # the agent's own processes are not the portal's
            names = vars(importlib.import_module(module.name))
            found += [
                f"{module.name}.{name}"
                for name, value in names.items()
                if issubclass(type(value), ThreadPoolExecutor)  # a lazy proxy is not asked
            ]
    assert found == []

"""``portal.pools.LoopBatches``: the items waiting on the event loop go together in one
call, and none is left waiting."""

from __future__ import annotations

import asyncio

from portal.pools import LoopBatches


def test_an_item_added_right_after_a_batch_answered_is_run():
    """The caller a batch has just answered adds the next item at once, before the call
    that answered it has finished its task: it is run (it used to wait for ever)."""
    calls: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0)
        return [item * 2 for item in items]

    batches = LoopBatches(double, max_items=10)

    async def scenario():
        first = await batches(1)
        second = await batches(2)  # no step in between
        return first, second

    async def bounded():
        return await asyncio.wait_for(scenario(), timeout=2)

    assert asyncio.run(bounded()) == (2, 4)
    assert calls == [[1], [2]]


def test_items_that_wait_together_go_in_one_call():
    calls: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [item * 2 for item in items]

    batches = LoopBatches(double, max_items=10)

    async def scenario():
        return await asyncio.gather(*(batches(n) for n in range(5)))

    assert asyncio.run(scenario()) == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2, 3, 4]]


def test_quiet_returns_when_the_batches_are_done_and_never_later_than_asked():
    """Work that gives a burst the interpreter first waits for its batches to finish, and
    no longer than it said, however long they go on."""
    release = asyncio.Event()

    async def held(items: list[int]) -> list[int]:
        await release.wait()
        return items

    batches = LoopBatches(held, max_items=10)

    async def scenario():
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batches.quiet(5)  # nothing ever ran on this loop: at once
        assert loop.time() - started < 0.1

        pending = asyncio.ensure_future(batches(1))
        await asyncio.sleep(0)
        started = loop.time()
        await batches.quiet(0.05)  # still held: given up after its bound
        waited_out = loop.time() - started
        assert not pending.done()

        waiter = asyncio.ensure_future(batches.quiet(5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        release.set()
        assert await pending == 1
        await asyncio.wait_for(waiter, 1)  # done as soon as the batch was
        return waited_out

    waited_out = asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    assert 0.04 <= waited_out < 1


def test_a_drain_cancelled_with_items_waiting_answers_them_and_leaves_the_loop_quiet():
    """At a loop's shutdown the drain under way is cancelled: the items that were waiting
    for it are cancelled too (their callers do not wait for ever), and ``quiet`` returns
    at once instead of its whole bound for every later caller."""
    started = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(10)
        return items

    batches = LoopBatches(slow, max_items=1)

    async def scenario():
        first = asyncio.ensure_future(batches(1))
        await started.wait()
        later = [asyncio.ensure_future(batches(n)) for n in (2, 3)]
        await asyncio.sleep(0)
        (drain,) = batches._loops[asyncio.get_running_loop()].tasks
        drain.cancel()
        outcomes = await asyncio.wait_for(
            asyncio.gather(first, *later, return_exceptions=True), timeout=2
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        await batches.quiet(5)
        return outcomes, loop.time() - began

    outcomes, quiet_took = asyncio.run(scenario())
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
    assert quiet_took < 0.5


def test_a_drain_cancelled_before_it_ever_ran_leaves_no_caller_waiting():
    """At shutdown the loop may cancel a drain in the step that created it: its body
    never runs, yet its caller is answered (cancelled) and ``quiet`` returns at once."""

    async def echo(items: list[int]) -> list[int]:
        return items

    batches = LoopBatches(echo, max_items=10)

    async def scenario():
        loop = asyncio.get_running_loop()
        caller = loop.create_task(batches(1))
        while not batches._loops.get(loop) or not batches._loops[loop].tasks:
            await asyncio.sleep(0)
        (drain,) = batches._loops[loop].tasks
        drain.cancel()  # before its first step
        (outcome,) = await asyncio.wait_for(asyncio.gather(caller, return_exceptions=True), 2)
        began = loop.time()
        await batches.quiet(5)
        return outcome, loop.time() - began

    outcome, quiet_took = asyncio.run(scenario())
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert quiet_took < 0.5

"""``bench.thread_cpu`` says which part of a command spent the CPU."""

from __future__ import annotations

import sys

from bench.thread_cpu import measure


def test_it_counts_a_child_processes_cpu_apart_from_the_commands_own():
    busy = "sum(range(4 * 10**7))"  # about a second of CPU
    _wall, code, parts = measure(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', '{busy}'])",
        ]
    )
    assert code == 0
    child = sum(parts["child processes"])
    assert child > 0.3
    assert sum(parts["main thread"]) < child / 2

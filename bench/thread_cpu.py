"""CPU per thread of a command and of its child processes: ``python -m bench.thread_cpu CMD...``.

Polls ``/proc/<pid>/task/*/stat`` every 50 ms while the command runs and keeps each thread's
last reading, then prints the command's main thread, its other threads together, and its
child processes (e.g. a backup's chunking processes) together: which part of a pipeline
spends the CPU. A thread that lives less than 50 ms may be missed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def _children(root: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == root:
            out.append(int(pid))
    return out


def measure(cmd: list[str]) -> tuple[float, int, dict[str, tuple[float, float]]]:
    """(wall seconds, exit code, {part: (user, system)})."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    seen: dict[tuple[int, int], tuple[float, float]] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *_children(proc.pid)]:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                seen[(pid, int(tid))] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
        time.sleep(0.05)
    wall = time.monotonic() - started
    parts: dict[str, tuple[float, float]] = {}
    for (pid, tid), (user, system) in seen.items():
        if pid != proc.pid:
            part = "child processes"
        else:
            part = "main thread" if tid == pid else "other threads"
        u, s = parts.get(part, (0.0, 0.0))
        parts[part] = (u + user, s + system)
    return wall, proc.returncode, parts


def main(argv: list[str]) -> int:
    wall, code, parts = measure(argv)
    total = sum(u + s for u, s in parts.values())
    print(f"wall {wall:.2f} s, exit {code}, load {os.getloadavg()[0]:.1f}, CPU {total:.2f} s")
    for part in ("main thread", "other threads", "child processes"):
        u, s = parts.get(part, (0.0, 0.0))
        print(f"  {part:16} {u + s:6.2f} s ({u:.2f} user, {s:.2f} system)")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

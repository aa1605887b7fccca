"""Build the benchmark data set from installed files nobody here wrote.

Copies regular files (and symlinks, as links) from the Python stdlib, /usr/share/doc, the rest of
/usr/share, static libraries and shared objects under /usr/lib, and a few large binaries into a
scratch folder until the size and file-count targets are reached. The result is cached: a
``.complete`` marker with the parameters makes later runs reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

ROOTS = [
    "/usr/lib/python3.11",
    "/usr/lib/python3",
    "/usr/share/doc",
    "/usr/share",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib",
]
LARGE_FILES = [
    "/usr/lib/chromium/chromium",
    "/usr/lib/jvm/temurin-25-jdk-amd64/lib/modules",
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/modules",
    "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
    "/usr/bin/node",
    "/usr/local/bin/terraform",
    "/usr/lib/chromium/resources.pak",
    "/usr/lib/google-cloud-sdk/bin/anthoscli",
    "/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main",
    "/usr/local/cuda-13.0/nvvm/bin/cicc",
    "/usr/local/cuda-13.0/lib/libnvvm.so.4",
]


def build(target: Path, *, size: int, files: int) -> dict:
    """Fill ``target`` with about ``size`` bytes in about ``files`` files; reuse a complete one."""
    marker = target / ".complete"
    wanted = {"size": size, "files": files, "version": 4}
    if marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        return json.loads(marker.read_text())
    if target.exists():
        shutil.rmtree(target)
    data = target / "data"
    data.mkdir(parents=True)
    total = count = 0
    # A few large binaries first (up to ~60% of the size), like a real home or server.
    for src in LARGE_FILES:
        if os.path.isfile(src) and total + os.path.getsize(src) < size * 0.62:
            dst = data / "large" / src.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            total += os.path.getsize(src)
            count += 1
    seen: set[tuple[int, int]] = set()
    done = False
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if dirpath.startswith("/usr/lib/chromium"):
                continue
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                try:
                    st = os.lstat(src)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                dst = data / src.lstrip("/")
                if dst.exists() or dst.is_symlink():
                    continue
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if os.path.islink(src):
                        os.symlink(os.readlink(src), dst)
                    elif os.path.isfile(src) and st.st_size < 64 << 20:
                        shutil.copy2(src, dst)
                        total += st.st_size
                    else:
                        continue
                except OSError:
                    continue
                count += 1
                if total >= size or count >= files:
                    done = True
                    break
            if done:
                break
        if done:
            break
    info = {"params": wanted, "bytes": total, "files": count, "path": str(data)}
    marker.write_text(json.dumps(info))
    return info


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1]), size=int(float(sys.argv[2])), files=int(sys.argv[3])))

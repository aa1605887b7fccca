"""The portal's check of a compaction report against storage (the rules of
``jobs.services.compaction``, which holds why): pure, no Django, so the benchmark
(``bench.compaction``) runs the same check the portal does.

The portal cannot read chunks; it reads sizes, each old pack's trailer (how many chunk
objects its sealed header lists) and the bytes of every object the report says it moved.
"""

from __future__ import annotations

from collections import OrderedDict

from agents.runtime.blobstore import BlobNotFound, StorageError
from agents.runtime.engine import layout
from agents.runtime.engine.crypto import OVERHEAD
from agents.runtime.engine.format import PACK_ROW, TRAILER
from agents.runtime.protocol import CompactReport

NEW_PACK_WINDOW = 4  # new packs the check keeps in memory at once (they are filled in order)


class CompactionRefused(Exception):
    """The report does not hold up against storage; the message says why."""


class CompactionUnverifiable(Exception):
    """Storage could not be read to check the report; the agent sends it again later."""


def _tail_objects(store, name: str, size: int) -> tuple[int, int]:
    """(number of chunk objects, where the header starts) from a pack's trailer."""
    if size < TRAILER.size:
        raise CompactionRefused(f"pack {name} is too short to be a pack")
    (hlen,) = TRAILER.unpack(store.get_range(name, size - TRAILER.size, TRAILER.size))
    rows, rest = divmod(hlen - OVERHEAD, PACK_ROW.size)
    if hlen < OVERHEAD or rest or hlen + TRAILER.size > size:
        raise CompactionRefused(f"pack {name} does not end in a pack header")
    return rows, size - TRAILER.size - hlen


def compaction_check(*, report: CompactReport, store) -> None:
    """Check ``report`` against storage (module docstring); ``CompactionRefused`` says
    what does not hold, ``CompactionUnverifiable`` that storage could not be read."""
    try:
        stored = {blob.name: blob for blob in store.list(layout.DATA_PREFIX)}
        olds = {p.pack for p in report.packs}
        if len(olds) != len(report.packs):
            raise CompactionRefused("the report names a pack twice")
        new_names = []
        for pack, size in report.new_packs:
            name = layout.pack_blob(pack)
            blob = stored.get(name)
            if pack in olds or blob is None or blob.size != size:
                raise CompactionRefused(f"new pack {pack} is not stored as reported")
            new_names.append(name)
        if len(set(new_names)) != len(new_names):
            raise CompactionRefused("the report names a new pack twice")
        cache: OrderedDict[str, bytes] = OrderedDict()

        def new_bytes(index: int) -> bytes:
            name = new_names[index]
            if name not in cache:
                cache[name] = store.get(name)
                while len(cache) > NEW_PACK_WINDOW:
                    cache.popitem(last=False)
            return cache[name]

        for old in report.packs:
            name = layout.pack_blob(old.pack)
            blob = stored.get(name)
            if blob is None or blob.size != old.size:
                raise CompactionRefused(f"pack {old.pack} is not stored as reported")
            count, end = _tail_objects(store, name, old.size)
            if len(old.objects) != count:
                raise CompactionRefused(
                    f"pack {old.pack} holds {count} chunk objects, the report lists "
                    f"{len(old.objects)}"
                )
            pos = 0
            moved = [obj for obj in old.objects if len(obj) == 4]
            for obj in old.objects:
                if obj[0] != pos or obj[1] <= 0:
                    raise CompactionRefused(f"the objects listed do not cover pack {old.pack}")
                pos += obj[1]
            if pos != end:
                raise CompactionRefused(f"the objects listed do not cover pack {old.pack}")
            if not moved:
                continue
            data = store.get(name)
            for off, length, index, new_off in moved:
                target = new_bytes(index)
                if target[new_off : new_off + length] != data[off : off + length]:
                    raise CompactionRefused(
                        f"an object of pack {old.pack} is not in new pack "
                        f"{report.new_packs[index][0]} where the report says"
                    )
    except (BlobNotFound, StorageError) as exc:
        raise CompactionUnverifiable(
            f"The vault's storage could not be read to check the compaction: {exc}"
        ) from exc

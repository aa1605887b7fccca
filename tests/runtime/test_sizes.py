"""The agent writes sizes as the portal does (``agents.runtime.sizes``): a failed job's
reason, a backup's summary and the terminal say "2.9 MB" where the job page beside them,
through Django's ``filesizeformat``, says "2.9 MB" too — not "2.8 MiB" or "3.0 MB"."""

from __future__ import annotations

import pytest
from django.template.defaultfilters import filesizeformat

from agents.runtime.sizes import size_text

EDGES = [0, 1, 2, 1023, 1024, 1025, 1536, 10**6, 5 << 20, 3_000_038, 2**30 - 1, 2**30]
EDGES += [int(1.5 * 2**40), 2**50, 3 * 2**60, 7_654_321_987]


@pytest.mark.parametrize("n", [*EDGES, -1, -2048])
def test_a_size_reads_as_the_portal_writes_it(n):
    # (the page keeps a number and its unit together with a no-break space)
    assert size_text(n) == filesizeformat(n).replace("\xa0", " ")


def test_a_rate_in_bytes_per_second_may_be_a_fraction():
    assert size_text(0.0) == "0 bytes"
    assert size_text(1536.4) == "1.5 KB"

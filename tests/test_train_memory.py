"""Training keeps freed minibatch memory in the process (glibc) instead of paging it in
afresh every step."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mvae_sc.train import _glibc

# Page faults of rounds that allocate five 20 MB and three 60 MB tensors (above glibc's
# largest mmap threshold, as a minibatch tensor of 128 cells x 110,000 peaks) and free
# them, before and inside the context, and the resident memory inside and after it; in a
# fresh process, because allocator settings are process-wide.
_CHURN = """
import os
import resource
import torch
from mvae_sc.train import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, _glibc, reuse_freed_memory

# glibc's initial thresholds (128 KiB), held fixed: without this, whether its dynamic
# adjustment trims between rounds depends on the heap's layout
libc = _glibc()
libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        blocks = [torch.ones(n) for n in [5_000_000] * 5 + [15_000_000] * 3]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

faults()
plain = faults()
with reuse_freed_memory():
    faults()
    inside = faults()
    kept = rss_mb()
returned = rss_mb()
print(plain, inside, kept, returned)
"""


@pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only (Linux)")
def test_freed_memory_is_reused_inside_and_returned_after():
    done = subprocess.run(
        [sys.executable, "-c", _CHURN], capture_output=True, text=True, check=True
    )
    plain, inside, kept, returned = map(float, done.stdout.split())
    pages = 5 * 280_000_000 // 4096  # every round touching fresh pages
    assert plain > pages / 2, (plain, inside)  # what the context is for
    assert inside < plain / 10, (plain, inside)
    # the 280 MB kept for reuse inside is handed back on exit
    assert kept - returned > 200, (kept, returned)

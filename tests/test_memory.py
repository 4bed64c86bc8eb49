"""Freed heap memory goes back to the OS (what keeps SFT's and GRPO's resident set flat)."""

from __future__ import annotations

import os
import sys

import pytest

from trajgym.train.common import release_freed_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_blocks_are_returned_to_the_os() -> None:
    # 64 KiB blocks sit below glibc's mmap threshold, so they come from the heap; the last one
    # stays alive, pinning the heap's top, so that free() alone cannot shrink it.
    blocks = [bytearray(b"x" * (64 << 10)) for _ in range(4000)]  # ~256 MiB, touched
    pinned = blocks[-1]
    del blocks
    before = _resident_bytes()
    release_freed_memory()
    after = _resident_bytes()
    assert before - after > 128 << 20, (before, after)
    assert len(pinned) == 64 << 10

"""Memory a big request took, given back. glibc's malloc serves a block of at least
M_MMAP_THRESHOLD bytes from its own memory map, unmapped when freed; but the threshold grows to the
size of the biggest such block freed (up to 32 MB), after which blocks that big come from the heap,
whose freed pages the process keeps. So a server that parsed and tokenized one 30 MB body kept
hundreds of MB after it. `return_big_blocks()` fixes the threshold at BIG_BLOCK (which also stops it
growing): every block of a big request is unmapped when freed. The serving processes call it at
start (the ingress, the tokenizer deployment, the model replicas, the Ray Data stages, `create_app`);
a no-op where the C library is not glibc."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

BIG_BLOCK = 1 << 20  # bytes: a block this big is its own memory map, returned to the system when freed
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


@cache
def return_big_blocks() -> bool:
    """Fix glibc's mmap threshold at BIG_BLOCK for this process (once); whether it was set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, BIG_BLOCK))
    except (OSError, AttributeError):
        return False

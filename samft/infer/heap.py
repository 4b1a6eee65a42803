"""Keep freed heap memory mapped while a CPU inference loop runs (glibc only).

Each decoder call allocates and frees tensors of a few MiB to a few tens of MiB (the
image tokens of its prompts, `N x hw x C` floats). glibc returns the top of the heap to
the system whenever more than its trim threshold lies free there (by default twice its
dynamic mmap threshold, at most 64 MiB), so the next call maps those pages afresh and
faults every one of them in: LiteMedSAM's automatic masks, one thread, faulted ~6,000
pages per point, 10-25 % of the decoder's time (more on a busy machine). `retained_heap`
raises the trim threshold while its block runs, so the pages freed by one call are reused
by the next, and pins the mmap threshold at glibc's own dynamic maximum (32 MiB) so that
the calls' tensors come from the heap at all; on leaving, it sets the trim threshold to the
value glibc's dynamic rule gives at that maximum and hands the free memory back
(`malloc_trim`). Setting them ends glibc's dynamic adjustment for the process, as any
`mallopt` does; elsewhere (other C libraries) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
RETAINED_TRIM_THRESHOLD = 2**30  # while retaining: free memory kept up to 1 GiB
RESTORED_TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # glibc's dynamic rule at its maximum


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (has `mallopt` and `malloc_trim`)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def retained_heap() -> Iterator[bool]:
    """Keep freed heap pages for reuse inside the block; yields whether it could (glibc)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, RETAINED_TRIM_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, RESTORED_TRIM_THRESHOLD)
        libc.malloc_trim(0)

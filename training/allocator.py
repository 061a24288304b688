"""glibc's malloc kept from handing training's large temporaries back to the kernel.

PyTorch's CPU allocator takes each tensor from malloc and frees it when the last
reference goes. glibc serves blocks above its mmap threshold with fresh mappings and
returns the heap's free top above its trim threshold, so a training step's short-lived
[batch, catalogue] tensors (the exact softmax's logits, their copies and gradients:
6.6 MiB each on ml-100k) were faulted in page by page again at every step
(tests/training/test_allocator.py counts the faults; docs/SCALE.md, item 24, the time).
tcmalloc or jemalloc preloaded would do the same (PyTorch's CPU performance guides
suggest them); `mallopt` needs neither another library nor LD_PRELOAD. The settings
change where memory comes from, never what is computed."""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused there; 32 MiB is the largest
# glibc accepts on 64-bit machines, larger blocks are still mapped and unmapped.
MMAP_THRESHOLD = 32 << 20
# Free memory kept at the top of the heap before it is returned: a few steps' worth of
# temporaries, small against a training process's resident size.
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Tunes this process's glibc malloc (see the module docstring); True if it took.
    Elsewhere (another C library, another system) it changes nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols, its C library's among them: no search for the library
        # (find_library would run ldconfig in every training process).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    log.debug("malloc keeps freed blocks up to %d MiB: %s", MMAP_THRESHOLD >> 20, done)
    return done

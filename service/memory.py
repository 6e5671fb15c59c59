"""How the serving process manages its memory: two process-wide settings made once a bundle is loaded.

Decoding allocates the same few arrays of 0.1–5 MB at every ID level of every batch (logits, masks,
the self-attention cache). glibc's allocator serves blocks that large with fresh ``mmap`` pages and
returns them on ``free``, so each batch page-faults its working set in again (``python -m
benchmarks.serving``; docs/RESULTS.md "Serving speed"). ``tune_allocator`` keeps such blocks in the
heap, where freed memory is reused; the heap's high-water mark is bounded by the largest batch, so
memory does not grow (the reliability soak watches the RSS). ``freeze_heap`` keeps the collector off
the bundle's long-lived objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

__all__ = ["freeze_heap", "tune_allocator"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap, not from fresh mmap pages (glibc's own ceiling is 32 MiB)
MMAP_THRESHOLD_BYTES = 32 << 20
#: free memory at the heap's top is returned to the system only beyond this
TRIM_THRESHOLD_BYTES = 256 << 20


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    log.debug("malloc thresholds set: %s", done)
    return done


def freeze_heap() -> None:
    """Collect what is not frozen yet, then put every object alive now out of the cyclic garbage
    collector's reach.

    A loaded bundle is ~10^5 long-lived Python objects (catalogue rows, id maps, tag paths), and every
    full collection walked them all, a stop of the whole process falling on whichever requests were
    in flight, more often the higher the load. Frozen objects are still freed by reference counting,
    which is how a bundle that a reload replaced goes (it holds no reference cycle: a test checks it);
    so after a reload this collects only what was made since the last freeze, mostly the new bundle,
    instead of walking both bundles while requests wait.
    """
    gc.collect()
    gc.freeze()

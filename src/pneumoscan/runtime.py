"""The machine this process runs on: how many cores it may use, and the thread counts derived from them.

A leaf beside :mod:`pneumoscan.config` (rank 0 in ``tests/test_layers.py``): decoding many files
(:mod:`pneumoscan.data`), LiteRT interpreters and batch scoring (:mod:`pneumoscan.inference`), and
the HTTP service's decode pool (:mod:`pneumoscan.interfaces`) all size themselves from it, so it
must sit below every stage. It holds no defaults (those are :mod:`pneumoscan.config`'s): only what
the operating system says about this process.
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def decode_workers() -> int:
    """Threads for decoding many files: PIL and pydicom release the GIL while they decode, and file
    reads wait on the disk, so two per core (at most 8) keep the cores busy."""
    return min(8, 2 * available_cpus())

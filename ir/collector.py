"""Python's cyclic garbage collector while lpuc builds or walks a large program.

Parsing a program, checking it and planning its run make millions of long-lived objects and no
garbage cycles; with the collector on, each full collection walks all of them again (a quarter of
`lpuc run --timing-only` of a large program): it is paused. Reference counting still frees
everything as usual. A compile makes a few cycles (its passes' plans), so it collects, rarely.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def collector_paused():
    """No cyclic collection inside the block (nested blocks are fine); the collector's state after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def collections_rare():
    """A compile makes millions of small objects, most living until it ends, and few reference cycles: at the
    default thresholds the collector walks them over and over (a quarter of a large model's compile).
    Collect less often inside the block."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)

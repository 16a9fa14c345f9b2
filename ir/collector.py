"""Python's cyclic garbage collector, paused while lpuc builds or walks a large program.

Parsing a program, checking it and planning its run make millions of long-lived objects and no
garbage cycles; with the collector on, each full collection walks all of them again (a quarter of
`lpuc run --timing-only` of a large program). Reference counting still frees everything as usual.
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

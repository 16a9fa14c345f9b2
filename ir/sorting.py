"""Ordering millions of numbers with what goes with each.

np.argsort and np.lexsort order positions; np.sort orders the numbers themselves, several times faster on a
CPU with AVX-512 (14 million int64: 0.14 s, np.argsort 1.19 s). So where a number and what goes with it fit
in 63 bits together, they are sorted as one number: the value in the low bits, with an offset."""

from __future__ import annotations

import numpy as np


def by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`keys` (int64, >= 0) in ascending order and `values` (int64) in the same order; the values of equal keys
    in any order."""
    if not len(keys):
        return keys, values
    bits = int(np.abs(values).max()).bit_length() + 1  # (a value + 2 ** (bits - 1): from 0 to 2 ** bits - 1)
    if int(keys.max()) >> (63 - bits):  # (too large to pack)
        order = np.argsort(keys)
        return keys[order], values[order]
    packed = np.sort((keys << bits) | (values + (1 << (bits - 1))))
    return packed >> bits, (packed & ((1 << bits) - 1)) - (1 << (bits - 1))

"""ir.sorting: numbers in order with what goes with each, packed into one sort where they fit."""

from __future__ import annotations

import numpy as np
import pytest

from lpuc.ir.sorting import by_key


@pytest.mark.parametrize("largest", [10**6, 2**62])  # packed into one sort; too large for that: by positions
def test_keys_are_ordered_with_their_values(largest):
    rng = np.random.default_rng(7)
    keys = rng.integers(0, largest, 5000)
    keys[::3] = keys[1::3][:len(keys[::3])]  # (equal keys: their values in any order)
    values = rng.integers(-4096, 4097, len(keys))
    ordered, with_values = by_key(keys, values)
    assert (np.diff(ordered) >= 0).all()
    assert sorted(zip(ordered.tolist(), with_values.tolist())) == sorted(zip(keys.tolist(), values.tolist()))


def test_nothing_to_order():
    empty = np.zeros(0, np.int64)
    assert [len(x) for x in by_key(empty, empty)] == [0, 0]

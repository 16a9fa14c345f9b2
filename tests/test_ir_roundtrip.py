"""Property tests of the text form: for random valid modules (tests/strategies.py),
`parse(print(m)) == m`, `print(parse(text)) == text`, and the verifier accepts them.
Deterministic (derandomized), a few seconds."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lpuc.ir import DType, TensorType, parse, print_module
from lpuc.ir.builder import Builder
from lpuc.ir.verifier import verify
from helpers import by_the_rules
from strategies import GENERATORS, OP_NAMES, modules, state_attrs

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEEN_OPS: Counter = Counter()


@SETTINGS
@given(modules())
def test_random_modules_round_trip(module):
    verify(module)
    text = print_module(module)
    parsed = parse(text)
    assert parsed == module
    assert hash(parsed) == hash(module)
    assert print_module(parsed) == text
    assert parse(by_the_rules(text)) == parsed  # (one-line statements are one token: read as the rules read them)
    verify(parsed)
    SEEN_OPS.update(op.name for op in module.ops)


def test_the_random_modules_are_varied():
    """Runs after the property test (file order); skipped when run alone."""
    if not SEEN_OPS:
        pytest.skip("needs test_random_modules_round_trip to run first")
    assert len(SEEN_OPS) >= 45, sorted(set(OP_NAMES) - set(SEEN_OPS))
    assert sum(SEEN_OPS.values()) >= 1000


@pytest.mark.parametrize("name", OP_NAMES)
@settings(SETTINGS, max_examples=4)
@given(data=st.data())
def test_each_op(name, data):
    """Each op alone, a few times: every graph op is built, printed and parsed back."""
    b = Builder()
    pool = [b.input("x", TensorType((2, 3), DType.f32))]
    GENERATORS[name](data.draw, b, pool, name)
    b.output("y", pool[-1])
    module = verify(b.build("one_op", **state_attrs(b)))
    assert name in {op.name for op in module.ops}
    assert parse(print_module(module)) == module

"""compiler/fold_transposes.py: the keys' per-head transposes folded into one, casts moved before data moves;
the numbers the same (the evaluator, bit for bit), on heads wider than and not a multiple of a vector."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lpuc.compiler.fold_transposes import fold_transposes, hoist_casts
from lpuc.compiler.lower import lower
from lpuc.ir import DType, TensorType
from lpuc.ir.builder import Builder
from lpuc.ir.evaluator import evaluate
from lpuc.ir.machine import load_machine
from lpuc.ir.target import Target
from lpuc.ir.verifier import verify

F32 = DType.f32
TSP_V1 = Target(load_machine("tsp-v1"), 1)


def heads(seq: int = 13, n: int = 3, dim: int = 333, reader_of_split: bool = False):
    """q @ k^T per head as exporters write it: split the last axis, heads forward, the keys transposed; the
    scores cast to fp16 after a move."""
    b = Builder()
    q = b.input("q", TensorType((1, seq, n * dim), F32))
    k = b.input("k", TensorType((1, seq, n * dim), F32))
    qh = b.op("graph.transpose", b.op("graph.reshape", q, shape=[1, seq, n, dim]), perm=[0, 2, 1, 3])
    ks = b.op("graph.reshape", k, shape=[1, seq, n, dim])
    kt = b.op("graph.transpose", b.op("graph.transpose", ks, perm=[0, 2, 1, 3]), perm=[0, 1, 3, 2])
    scores = b.op("graph.matmul", qh, kt)
    b.output("scores", b.op("graph.cast", b.op("graph.transpose", scores, perm=[0, 2, 1, 3]), to=DType.f16))
    if reader_of_split:  # the split keys read elsewhere too: left as written
        b.output("split", ks)
    module = verify(b.build("heads"))
    rng = np.random.default_rng(7)
    feeds = {name: rng.standard_normal((1, seq, n * dim)).astype(np.float32) for name in ("q", "k")}
    return module, feeds


def test_the_keys_transpose_is_one_transpose_of_the_tokens_and_the_numbers_stay():
    module, feeds = heads()
    folded = verify(fold_transposes(module))
    transposes = [op for op in folded.ops if op.name == "graph.transpose"]
    # the keys: one transpose of [1, seq, heads * dim] to [1, heads * dim, seq], then a reshape into heads
    assert [op.results[0].type.shape for op in transposes if op.operands[0].name == "k"] == [(1, 999, 13)]
    want, got = evaluate(module, feeds), evaluate(folded, feeds)
    assert all(np.array_equal(want[name], got[name]) for name in want)
    # lowered, the keys' transpose is one SXM transpose that swaps the last two axes, the split a view
    lowered = lower(folded, TSP_V1)
    counts = Counter(op.name for op in lowered.ops)
    assert counts["sxm.transpose"] == 1 and counts["sxm.reshape"] == 1  # (the queries' split moves lanes)


def test_a_value_read_elsewhere_is_not_folded():
    module, _ = heads(reader_of_split=True)
    folded = fold_transposes(module)
    assert not any(op.results[0].name.endswith(".unsplit") for op in folded.ops)


def test_a_cast_moves_before_the_moves_of_a_value_read_once():
    module, feeds = heads()
    hoisted = verify(hoist_casts(module))
    cast = next(op for op in hoisted.ops if op.name == "graph.cast")
    assert cast.operands[0].type.shape == (1, 3, 13, 13)  # the scores as the matmul made them
    assert hoisted.outputs[0][1].type.dtype is DType.f16
    want, got = evaluate(module, feeds), evaluate(hoisted, feeds)
    assert all(np.array_equal(want[name], got[name]) for name in want)

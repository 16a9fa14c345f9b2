"""Grouped-query attention without copies (compiler/grouped_heads.py): matmuls by repeated KV heads are
computed on the shared heads, the repeats dropped, and the results are the model's."""

from __future__ import annotations

import numpy as np
import pytest

from lpuc.compiler.frontend import import_onnx
from lpuc.compiler.grouped_heads import group_heads
from lpuc.ir import parse
from lpuc.ir.evaluator import evaluate

from helpers import SAMPLES

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("name", ["llama_decode", "llama_prefill", "gemma_prefill", "mixtral_decode"])
def test_exported_models_lose_their_kv_copies(name):
    """Hugging Face's repeat_kv as the exporter writes it (for keys: through a rank-3 reshape, a transpose
    and a scale) is gone, and the outputs equal the model's as written."""
    module, _ = import_onnx(SAMPLES / f"{name}.onnx")
    grouped = group_heads(module)
    assert any(op.name == "graph.expand" for op in module.ops)
    assert not any(op.name == "graph.expand" for op in grouped.ops)
    inputs = dict(np.load(SAMPLES / f"{name}.inputs.npz"))
    want, got = evaluate(module, inputs), evaluate(grouped, inputs)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * np.abs(want[k]).max())


# 3 KV heads repeated 5 times for 15 query heads; 7 queries over a context of 333 (wider than a vector, not a
# multiple of it); keys transposed and scaled after the repeat, values read as repeated.
GQA = """
module @gqa {
  input %q : f32[1,15,7,40]
  input %k : f32[1,3,333,40]
  input %v : f32[1,3,333,40]
  %ku = graph.reshape %k {shape = [1, 3, 1, 333, 40]} : f32[1,3,1,333,40]
  %ke = graph.expand %ku {shape = [1, 3, 5, 333, 40]} : f32[1,3,5,333,40]
  %kr = graph.reshape %ke {shape = [15, 333, 40]} : f32[15,333,40]
  %kt = graph.transpose %kr {perm = [0, 2, 1]} : f32[15,40,333]
  %k4 = graph.reshape %kt {shape = [1, 15, 40, 333]} : f32[1,15,40,333]
  %half = graph.constant {value = tensor<f32[], [0.5]>} : f32[]
  %ks = graph.mul %k4, %half : f32[1,15,40,333]
  %scores = graph.matmul %q, %ks : f32[1,15,7,333]
  %p = graph.softmax %scores {axis = -1} : f32[1,15,7,333]
  %vu = graph.reshape %v {shape = [1, 3, 1, 333, 40]} : f32[1,3,1,333,40]
  %ve = graph.expand %vu {shape = [1, 3, 5, 333, 40]} : f32[1,3,5,333,40]
  %vr = graph.reshape %ve {shape = [1, 15, 333, 40]} : f32[1,15,333,40]
  %out = graph.matmul %p, %vr : f32[1,15,7,40]
  output "out" = %out
}
"""


def _inputs():
    return {"q": RNG.standard_normal((1, 15, 7, 40), np.float32),
            "k": RNG.standard_normal((1, 3, 333, 40), np.float32),
            "v": RNG.standard_normal((1, 3, 333, 40), np.float32)}


def test_grouped_attention_equals_repeated():
    module = parse(GQA)
    grouped = group_heads(module)
    names = [op.name for op in grouped.ops]
    assert "graph.expand" not in names and names.count("graph.matmul") == 2
    # the grouped matmuls multiply the 3 shared heads: [1, 3, 5*7, 40] by [1, 3, 40, 333] and [1, 3, 333, 40]
    assert sorted(op.result.type.shape for op in grouped.ops if op.name == "graph.matmul") == [
        (1, 3, 35, 40), (1, 3, 35, 333)]
    inputs = _inputs()
    # the same sums in another order: near-zero outputs differ by the f32 rounding of their terms, so the
    # absolute tolerance is relative to the output's scale, as above (with atol=1e-6 the test failed on an
    # AMD EPYC, whose OpenBLAS kernel orders the sums differently: 1.8e-6 at an output of 0.034, scale ~3)
    want = evaluate(module, inputs)["out"]
    np.testing.assert_allclose(evaluate(grouped, inputs)["out"], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_a_repeat_not_along_the_heads_is_left_alone():
    """Repeated along the rows a matmul contracts, or mixed with a per-head operand: computed as written."""
    text = GQA.replace("%half = graph.constant {value = tensor<f32[], [0.5]>} : f32[]",
                       "%half = graph.constant {value = tensor<f32[1,15,1,1], [" + ", ".join(["0.5"] * 15) + "]>} : f32[1,15,1,1]")
    module = parse(text)
    grouped = group_heads(module)
    # the keys' repeat meets a per-head scale: kept; the values' repeat is still grouped
    assert [op.name for op in grouped.ops].count("graph.expand") == 1

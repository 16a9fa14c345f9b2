"""Write BERT-base or BERT-Large (Hugging Face ``BertModel``, the encoder) as ONNX at its real size without its weights.

Beside ``shape_only.py`` (Llama) and sharing its external-data layout: every weight lives in ONE sparse file
``OUT.weights`` (extended to its length, nothing written), so only the shapes mean anything; compile with
``lpuc compile OUT.onnx --no-weights``.

    python samples/shape_only_bert.py -o /tmp/bert_base.onnx              # seq 128, float32 as HF exports it
    python samples/shape_only_bert.py --preset large -o /tmp/bert_large.onnx  # 24 layers, hidden 1024
    lpuc compile /tmp/bert_base.onnx --no-weights --precision int8 -o /tmp/bert_base.lpu

The graph (opset 20): word + position + token-type embeddings (Gather) and LayerNormalization; per layer
q/k/v MatMul + bias, heads, scores / sqrt(head_dim) + the additive attention mask (an input), Softmax,
context, output MatMul + bias, residual + LayerNormalization, GELU (erf) MLP, residual + LayerNormalization;
output: the last hidden state.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

_spec = importlib.util.spec_from_file_location("samples_shape_only", Path(__file__).with_name("shape_only.py"))
shape_only = sys.modules.get(_spec.name) or importlib.util.module_from_spec(_spec)
if _spec.name not in sys.modules:
    sys.modules[_spec.name] = shape_only  # dataclasses look their module up there
    _spec.loader.exec_module(shape_only)


@dataclass(frozen=True)
class BertPreset:
    name: str = "base"
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 30522
    max_pos: int = 512
    type_vocab: int = 2
    eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


BERT_BASE = BertPreset()
BERT_LARGE = BertPreset("large", layers=24, hidden=1024, heads=16, intermediate=4096)
PRESETS = {p.name: p for p in (BERT_BASE, BERT_LARGE)}


def param_count(p: BertPreset = BERT_BASE) -> int:
    """BertModel's parameters without the pooler: embeddings, their LayerNorm, the layers."""
    per_layer = 4 * (p.hidden * p.hidden + p.hidden) + 2 * p.hidden * p.intermediate + p.intermediate + p.hidden \
        + 2 * 2 * p.hidden
    return (p.vocab + p.max_pos + p.type_vocab) * p.hidden + 2 * p.hidden + p.layers * per_layer


def build(seq: int = 128, p: BertPreset = BERT_BASE, dtype: str = "float32", location: str = "model.weights"):
    g = shape_only._Graph(p, dtype, location)
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq]),
              helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [1, seq]),
              helper.make_tensor_value_info("attention_bias", g.elem, [1, 1, 1, seq])]  # 0 or the dtype's min
    outputs = [helper.make_tensor_value_info("last_hidden_state", g.elem, [1, seq, p.hidden])]

    def norm(x: str, pre: str) -> str:
        return g.node("LayerNormalization", [x, g.weight(f"{pre}.weight", (p.hidden,), "norm"),
                                             g.weight(f"{pre}.bias", (p.hidden,), "norm")], "layer_norm",
                      axis=-1, epsilon=p.eps)

    def linear(x: str, pre: str, n_in: int, n_out: int) -> str:
        y = g.node("MatMul", [x, g.weight(f"{pre}.weight", (n_in, n_out))], "matmul")
        return g.node("Add", [y, g.weight(f"{pre}.bias", (n_out,), "norm")], "linear")

    def heads(x: str) -> str:
        r = g.node("Reshape", [x, g.ints(1, seq, p.heads, p.head_dim)], "split_heads")
        return g.node("Transpose", [r], "heads", perm=[0, 2, 1, 3])

    positions = g.const(shape_only.np.arange(seq, dtype=shape_only.np.int64)[None], "position_ids")
    h = g.node("Add", [g.node("Gather", [g.weight("embeddings.word_embeddings.weight", (p.vocab, p.hidden)),
                                         "input_ids"], "words", axis=0),
                       g.node("Gather", [g.weight("embeddings.position_embeddings.weight", (p.max_pos, p.hidden)),
                                         positions], "positions", axis=0)], "embed")
    h = g.node("Add", [h, g.node("Gather", [g.weight("embeddings.token_type_embeddings.weight",
                                                     (p.type_vocab, p.hidden)), "token_type_ids"], "types", axis=0)],
               "embed_types")
    h = norm(h, "embeddings.LayerNorm")
    scale = g.scalar(1.0 / math.sqrt(p.head_dim))
    for i in range(p.layers):
        pre = f"encoder.layer.{i}"
        q, k, v = (heads(linear(h, f"{pre}.attention.self.{n}", p.hidden, p.hidden)) for n in ("query", "key", "value"))
        kt = g.node("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
        scores = g.node("Add", [g.node("Mul", [g.node("MatMul", [q, kt], "qk"), scale], "scores"),
                                "attention_bias"], "masked")
        ctx = g.node("MatMul", [g.node("Softmax", [scores], "probs", axis=-1), v], "pv")
        ctx = g.node("Reshape", [g.node("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3]), g.ints(1, seq, p.hidden)],
                     "ctx")
        h = norm(g.node("Add", [linear(ctx, f"{pre}.attention.output.dense", p.hidden, p.hidden), h], "resid"),
                 f"{pre}.attention.output.LayerNorm")
        up = g.node("Gelu", [linear(h, f"{pre}.intermediate.dense", p.hidden, p.intermediate)], "gelu")
        h = norm(g.node("Add", [linear(up, f"{pre}.output.dense", p.intermediate, p.hidden), h], "resid"),
                 f"{pre}.output.LayerNorm")
    g.nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"], name="Identity_out"))
    graph = helper.make_graph(g.nodes, f"bert_{p.name}", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", shape_only.OPSET)],
                              producer_name="lpuc samples/shape_only_bert.py")
    model.ir_version = 10
    return model, g


def write(out: str | Path, seq: int = 128, dtype: str = "float32", p: BertPreset = BERT_BASE) -> dict:
    out = Path(out)
    weights = out.with_suffix(".weights")
    model, g = build(seq, p, dtype=dtype, location=weights.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape_only._fill(weights, g, "sparse", {})
    onnx.save(model, str(out))
    return {"model": str(out), "params": param_count(p), "weights_bytes": g.size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="shape_only_bert.py", description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    ap.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    ap.add_argument("--dtype", choices=sorted(shape_only.DTYPES), default="float32")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="base", help="BERT-base (default) or BERT-Large")
    args = ap.parse_args(argv)
    s = write(args.output, args.seq, args.dtype, PRESETS[args.preset])
    print(f"BERT-{args.preset}: {s['params']:,} params -> {s['model']} + {s['weights_bytes'] / 1e6:.0f} MB sparse "
          "weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())

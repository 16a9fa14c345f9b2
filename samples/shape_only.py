"""Write Llama-architecture ONNX models (and Mixtral's mixture of experts) at real sizes without allocating
their weights.

The graph is built directly with ``onnx.helper`` (no torch, no transformers) and follows Hugging Face's
``LlamaForCausalLM`` forward in the decomposed opset-20 form: Gather embedding; per layer RMSNorm
(Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul), q/k/v MatMul, head split, rotate_half RoPE (cos/sin tables gathered
by ``position_ids``), GQA ``repeat_kv`` (Unsqueeze/Expand/Reshape), scaled scores, additive mask, Softmax,
o MatMul, residual; SwiGLU MLP (x * Sigmoid(x)); final RMSNorm and lm_head -> ``logits``. A preset with
experts (``mixtral-8x7b``, ``tiny-moe``) has Mixtral's sparse MoE block in place of the MLP, as transformers
exports it with ``batched_mm`` experts (static shapes): router Softmax, TopK, renormalised weights, the chosen
experts' stacked weights gathered by GatherND and multiplied batched, the outputs weighted and summed.

Inputs and outputs are Hugging Face's (batch 1): prefill takes ``input_ids``, ``attention_mask``, ``position_ids``
[1, SEQ] and returns ``logits`` and per layer ``present.{i}.key/value`` [1, kv_heads, SEQ, head_dim] (K after RoPE);
decode takes ``input_ids`` and ``position_ids`` [1, 1], ``attention_mask`` [1, C] and per layer
``past_key_values.{i}.key/value`` [1, kv_heads, C-1, head_dim], and returns ``logits`` and ``present.{i}.*``
[1, kv_heads, C, head_dim] (the past followed by the new token), C = PAST + 1 the context. The attention mask
(1 = attend) becomes an additive mask (the dtype's minimum where 0), combined with the causal mask in prefill.

Every large initializer is ONNX external data in ONE file ``OUT.weights`` beside ``OUT.onnx``:

- ``--weights sparse`` (default): the file is only extended to its full length (a sparse file: nothing is
  written, no memory is used), so a 70B model is written in about a second. Only the shapes mean anything.
- ``--weights random``: seeded random values (normal * 0.02 for matrices, 1 + noise for norm weights) and the
  exact RoPE tables and causal mask, written in chunks: for ``tiny``, which onnxruntime can run.

    python samples/shape_only.py llama2-70b --mode decode --past 127 -o /tmp/llama70b_decode.onnx
    python samples/shape_only.py tiny --weights random --dtype float32 --seq 7 -o /tmp/tiny.onnx

Differences from an HF fp16 export: no float32 up-casts around RMSNorm/softmax/RoPE (every activation is in
``--dtype``), weights are stored [in, out] (``x @ W``, no Transpose), and the causal part of the prefill mask
is a constant of shape [S, S] (the additive mask comes from ``attention_mask`` by Cast/Sub/Mul and joins it by Min).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
ALIGN = 4096  # byte alignment of each tensor in the weights file (page aligned: mmap-friendly)
INLINE_BYTES = 1024  # a causal mask smaller than this stays inline (shape constants and scalars always do)
CHUNK_ELEMENTS = 1 << 22  # random mode: elements generated and written at a time
SEED = 0


@dataclass(frozen=True)
class Preset:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_pos: int
    rms_eps: float = 1e-5
    rope_theta: float = 1e4
    experts: int = 0    # a mixture of experts (Mixtral) in place of the MLP: this many, each a SwiGLU MLP
    top_k: int = 2      # ... of which each token takes this many (router softmax, TopK, renormalised)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


PRESETS = {
    "llama2-7b": Preset(layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab=32000, max_pos=4096),
    "llama2-70b": Preset(layers=80, hidden=8192, heads=64, kv_heads=8, intermediate=28672, vocab=32000,
                         max_pos=4096),
    # hidden 352: wider than one 320-lane vector and not a multiple of 320; head_dim 88; GQA 4 q / 2 kv heads.
    "mixtral-8x7b": Preset(layers=32, hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=32000,
                           max_pos=32768, rope_theta=1e6, experts=8, top_k=2),
    "tiny": Preset(layers=2, hidden=352, heads=4, kv_heads=2, intermediate=700, vocab=400, max_pos=128),
    "tiny-moe": Preset(layers=2, hidden=352, heads=4, kv_heads=2, intermediate=330, vocab=400, max_pos=128,
                       experts=4, top_k=2),
}

DTYPES = {"float16": (TensorProto.FLOAT16, np.float16), "float32": (TensorProto.FLOAT, np.float32)}


def _preset(preset: str | Preset, layers: int | None = None) -> Preset:
    p = PRESETS[preset] if isinstance(preset, str) else preset
    return replace(p, layers=layers) if layers is not None else p


def param_count(preset: str | Preset, layers: int | None = None) -> int:
    """Trainable parameters as HF counts them (RoPE tables and the mask are buffers, not parameters)."""
    p = _preset(preset, layers)
    kv = p.kv_heads * p.head_dim
    attn = p.hidden * p.hidden * 2 + p.hidden * kv * 2  # q, o; k, v
    mlp = 3 * p.hidden * p.intermediate * max(p.experts, 1) + p.hidden * p.experts  # (+ the router)
    per_layer = attn + mlp + 2 * p.hidden  # + input / post-attention norms
    return p.vocab * p.hidden * 2 + p.layers * per_layer + p.hidden  # embed, lm_head; layers; final norm


# --- weights ---------------------------------------------------------------------------------------------

@dataclass
class _Weight:
    proto: TensorProto
    shape: tuple[int, ...]
    kind: str  # "matrix", "norm", "cos", "sin", "mask"
    offset: int
    nbytes: int


class _Graph:
    """Nodes, initializers and the external-data layout of one model under construction."""

    def __init__(self, p: Preset, dtype: str, location: str):
        self.p = p
        self.elem, self.np_dtype = DTYPES[dtype]
        self.location = location
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.weights: list[_Weight] = []
        self.size = 0  # bytes of the weights file so far
        self.consts: dict[tuple, str] = {}
        self.counter = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.counter}", **attrs))
        return out

    def weight(self, name: str, shape: tuple[int, ...], kind: str = "matrix") -> str:
        """A float initializer in the weights file (never materialised here)."""
        nbytes = math.prod(shape) * np.dtype(self.np_dtype).itemsize
        t = TensorProto(name=name, data_type=self.elem, dims=shape)
        offset = -(-self.size // ALIGN) * ALIGN
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(nbytes))):
            t.external_data.add(key=k, value=v)
        self.size = offset + nbytes
        self.inits.append(t)
        self.weights.append(_Weight(t, shape, kind, offset, nbytes))
        return name

    def const(self, array: np.ndarray, base: str) -> str:
        """A small inline initializer, shared by value."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            name = f"{base}_const{len(self.consts)}"
            self.inits.append(numpy_helper.from_array(array, name))
            self.consts[key] = name
        return self.consts[key]

    def ints(self, *values: int) -> str:
        return self.const(np.asarray(values, np.int64), "shape")

    def scalar(self, value: float) -> str:
        return self.const(np.asarray(value, self.np_dtype), "scalar")


def _fill(path: Path, g: _Graph, mode: str, masks: dict[str, int]) -> None:
    """Create the weights file at its full length; in random mode write every tensor, chunk by chunk."""
    with open(path, "wb") as f:
        if mode == "sparse":
            f.truncate(g.size)
            return
        p, dt = g.p, g.np_dtype
        rng = np.random.default_rng(SEED)
        inv_freq = 1.0 / (p.rope_theta ** (np.arange(0, p.head_dim, 2, dtype=np.float64) / p.head_dim))
        for w in g.weights:
            f.seek(w.offset)
            numel = math.prod(w.shape)
            if w.kind in ("cos", "sin"):
                rows = w.shape[0]
                step = max(1, CHUNK_ELEMENTS // w.shape[1])
                for r in range(0, rows, step):
                    freqs = np.outer(np.arange(r, min(rows, r + step), dtype=np.float64), inv_freq)
                    emb = np.concatenate([freqs, freqs], axis=-1)
                    f.write((np.cos(emb) if w.kind == "cos" else np.sin(emb)).astype(dt).tobytes())
            elif w.kind == "mask":
                seq = masks[w.proto.name]
                step = max(1, CHUNK_ELEMENTS // w.shape[1])
                for r in range(0, seq, step):
                    f.write(_causal_mask(seq, dt, range(r, min(seq, r + step))).tobytes())
            else:
                for start in range(0, numel, CHUNK_ELEMENTS):
                    n = min(CHUNK_ELEMENTS, numel - start)
                    x = rng.standard_normal(n, dtype=np.float32)
                    x = 1 + 0.1 * x if w.kind == "norm" else 0.02 * x
                    f.write(x.astype(dt).tobytes())
        f.truncate(g.size)


# --- the graph ---------------------------------------------------------------------------------------------

def _rms_norm(g: _Graph, x: str, weight: str) -> str:
    sq = g.node("Pow", [x, g.scalar(2.0)], "pow")
    var = g.node("ReduceMean", [sq, g.ints(-1)], "variance", keepdims=1)
    var = g.node("Add", [var, g.scalar(g.p.rms_eps)], "variance_eps")
    rstd = g.node("Reciprocal", [g.node("Sqrt", [var], "std")], "rstd")
    return g.node("Mul", [weight, g.node("Mul", [x, rstd], "normed")], "rmsnorm")


def _rotate(g: _Graph, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin; x is [1, heads, S, head_dim], cos/sin [1, 1, S, head_dim]."""
    half = g.p.head_dim // 2
    x1 = g.node("Slice", [x, g.ints(0), g.ints(half), g.ints(-1)], "x1")
    x2 = g.node("Slice", [x, g.ints(half), g.ints(g.p.head_dim), g.ints(-1)], "x2")
    rot = g.node("Concat", [g.node("Neg", [x2], "neg_x2"), x1], "rotate_half", axis=-1)
    return g.node("Add", [g.node("Mul", [x, cos], "x_cos"), g.node("Mul", [rot, sin], "rot_sin")], "rope")


def _heads(g: _Graph, x: str, heads: int, seq: int) -> str:
    """[1, S, heads*hd] -> [1, heads, S, hd]."""
    r = g.node("Reshape", [x, g.ints(1, seq, heads, g.p.head_dim)], "split_heads")
    return g.node("Transpose", [r], "heads", perm=[0, 2, 1, 3])


def _repeat_kv(g: _Graph, x: str, total: int) -> str:
    """HF repeat_kv: [1, kv, T, hd] -> [1, kv*rep, T, hd] (each kv head repeated rep times in a row)."""
    p = g.p
    rep = p.heads // p.kv_heads
    if rep == 1:
        return x
    u = g.node("Unsqueeze", [x, g.ints(2)], "kv_unsqueeze")
    e = g.node("Expand", [u, g.ints(1, p.kv_heads, rep, total, p.head_dim)], "kv_expand")
    return g.node("Reshape", [e, g.ints(1, p.heads, total, p.head_dim)], "kv_repeat")


def _attention_mask(g: _Graph, causal: str | None, total: int) -> str:
    """The additive mask: the dtype's minimum where attention_mask [1, total] is 0, else 0; [1, 1, 1, total], or
    joined with the [S, total] causal constant by Min (not Add: two minima would overflow to -inf)."""
    off = g.node("Sub", [g.scalar(1.0), g.node("Cast", ["attention_mask"], "mask_float", to=g.elem)], "mask_off")
    padding = g.node("Mul", [off, g.scalar(float(np.finfo(g.np_dtype).min))], "mask_padding")
    padding = g.node("Reshape", [padding, g.ints(1, 1, 1, total)], "mask_rows")
    return padding if causal is None else g.node("Min", [causal, padding], "mask")


def _experts(g: _Graph, x: str, pre: str, seq: int) -> str:
    """Mixtral's sparse MoE block as transformers exports it with `batched_mm` experts (static shapes, no
    NonZero): router logits -> Softmax -> TopK -> renormalised weights; each token's top-k experts' stacked
    weights gathered (GatherND) and multiplied batched; the expert outputs weighted and summed. [1, S, H] in
    and out."""
    p, k = g.p, g.p.top_k
    rows = seq * k
    flat = g.node("Reshape", [x, g.ints(seq, p.hidden)], "tokens")
    router = g.weight(f"{pre}.block_sparse_moe.gate.weight", (p.hidden, p.experts))
    probs = g.node("Softmax", [g.node("MatMul", [flat, router], "router")], "router_probs", axis=-1)
    top = g.name("topk")
    g.nodes.append(helper.make_node("TopK", [probs, g.ints(k)], [f"{top}_values", f"{top}_indices"], name=top,
                                    axis=-1))
    weights = g.node("Div", [f"{top}_values", g.node("ReduceSum", [f"{top}_values", g.ints(1)], "topk_sum",
                                                      keepdims=1)], "routing")
    chosen = g.node("Reshape", [f"{top}_indices", g.ints(rows, 1)], "chosen")
    each = g.node("Reshape", [g.node("Expand", [g.node("Reshape", [flat, g.ints(seq, 1, p.hidden)], "token_rows"),
                                                 g.ints(seq, k, p.hidden)], "repeat"), g.ints(rows, p.hidden, 1)],
                  "token_per_choice")
    gate_up = g.weight(f"{pre}.block_sparse_moe.experts.gate_up_proj", (p.experts, 2 * p.intermediate, p.hidden))
    both = g.node("MatMul", [g.node("GatherND", [gate_up, chosen], "gate_up_chosen"), each], "gate_up")
    both = g.node("Reshape", [both, g.ints(rows, 2 * p.intermediate)], "gate_up_rows")
    gate, up = g.name("gate"), g.name("up")
    g.nodes.append(helper.make_node("Split", [both, g.ints(p.intermediate, p.intermediate)], [gate, up],
                                    name=g.name("Split"), axis=1))
    act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate], "sigmoid")], "silu"), up], "swiglu")
    down_w = g.weight(f"{pre}.block_sparse_moe.experts.down_proj", (p.experts, p.hidden, p.intermediate))
    down = g.node("MatMul", [g.node("GatherND", [down_w, chosen], "down_chosen"),
                             g.node("Reshape", [act, g.ints(rows, p.intermediate, 1)], "swiglu_cols")], "down")
    down = g.node("Mul", [g.node("Reshape", [down, g.ints(rows, p.hidden)], "down_rows"),
                          g.node("Reshape", [weights, g.ints(rows, 1)], "routing_rows")], "weighted")
    summed = g.node("ReduceSum", [g.node("Reshape", [down, g.ints(seq, k, p.hidden)], "per_token"), g.ints(1)],
                    "moe", keepdims=0)
    return g.node("Reshape", [summed, g.ints(1, seq, p.hidden)], "moe_out")


def _causal_mask(seq: int, dtype, rows: range | None = None) -> np.ndarray:
    """[S, S] (or those rows): 0 where query i may see key j (j <= i), the dtype's minimum elsewhere."""
    i = np.arange(seq)[rows if rows is not None else slice(None), None]
    j = np.arange(seq)[None, :]
    return np.where(j <= i, 0.0, np.finfo(dtype).min).astype(dtype)


def build(preset: str | Preset, mode: str = "prefill", seq: int = 32, past: int = 127, layers: int | None = None,
          dtype: str = "float16", location: str = "model.weights"
          ) -> tuple[onnx.ModelProto, _Graph, dict[str, int]]:
    """The model proto (weights referenced in `location`, not written), its layout, and the external masks."""
    p = _preset(preset, layers)
    if p.hidden % p.heads or p.heads % p.kv_heads or p.head_dim % 2:
        raise ValueError("hidden must split into heads, heads into kv groups, head_dim must be even")
    if mode == "decode":
        seq = 1
    else:
        past = 0
    total = past + seq
    if seq < 1 or past < 0 or (mode == "decode" and past < 1):
        raise ValueError("need --seq >= 1 and, in decode mode, --past >= 1")
    max_pos = max(p.max_pos, total)
    g = _Graph(p, dtype, location)
    kv_dim = p.kv_heads * p.head_dim

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, total]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, seq])]
    outputs = [helper.make_tensor_value_info("logits", g.elem, [1, seq, p.vocab])]

    embed = g.weight("model.embed_tokens.weight", (p.vocab, p.hidden))
    cos_table = g.weight("model.rotary_emb.cos_table", (max_pos, p.head_dim), "cos")
    sin_table = g.weight("model.rotary_emb.sin_table", (max_pos, p.head_dim), "sin")
    masks = {}  # external causal masks: name -> seq, made only when written (random mode)
    if mode == "decode":  # the one new token comes last: causality masks nothing
        causal = None
    elif seq * seq * np.dtype(g.np_dtype).itemsize >= INLINE_BYTES:
        causal = g.weight("model.causal_mask", (seq, seq), "mask")
        masks[causal] = seq
    else:
        causal = g.const(_causal_mask(seq, g.np_dtype), "causal_mask")

    h = g.node("Gather", [embed, "input_ids"], "embed", axis=0)
    # [1, S, hd] -> [1, 1, S, hd], shared by every layer
    cos = g.node("Unsqueeze", [g.node("Gather", [cos_table, "position_ids"], "cos_gather", axis=0), g.ints(1)], "cos")
    sin = g.node("Unsqueeze", [g.node("Gather", [sin_table, "position_ids"], "sin_gather", axis=0), g.ints(1)], "sin")
    scale = g.scalar(1.0 / math.sqrt(p.head_dim))
    mask = _attention_mask(g, causal, total)

    for i in range(p.layers):
        pre = f"model.layers.{i}"
        x = _rms_norm(g, h, g.weight(f"{pre}.input_layernorm.weight", (p.hidden,), "norm"))
        q = g.node("MatMul", [x, g.weight(f"{pre}.self_attn.q_proj.weight", (p.hidden, p.hidden))], "q")
        k = g.node("MatMul", [x, g.weight(f"{pre}.self_attn.k_proj.weight", (p.hidden, kv_dim))], "k")
        v = g.node("MatMul", [x, g.weight(f"{pre}.self_attn.v_proj.weight", (p.hidden, kv_dim))], "v")
        q = _rotate(g, _heads(g, q, p.heads, seq), cos, sin)
        k = _rotate(g, _heads(g, k, p.kv_heads, seq), cos, sin)
        v = _heads(g, v, p.kv_heads, seq)
        for name, new in (("key", k), ("value", v)):  # present = [past,] new K/V
            present = f"present.{i}.{name}"
            outputs.append(helper.make_tensor_value_info(present, g.elem, [1, p.kv_heads, total, p.head_dim]))
            if mode == "decode":
                cache = f"past_key_values.{i}.{name}"
                inputs.append(helper.make_tensor_value_info(cache, g.elem, [1, p.kv_heads, past, p.head_dim]))
                g.nodes.append(helper.make_node("Concat", [cache, new], [present], name=f"Concat_{present}", axis=2))
            else:
                g.nodes.append(helper.make_node("Identity", [new], [present], name=f"Identity_{present}"))
        k, v = f"present.{i}.key", f"present.{i}.value"
        k, v = _repeat_kv(g, k, total), _repeat_kv(g, v, total)
        kt = g.node("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
        scores = g.node("Mul", [g.node("MatMul", [q, kt], "qk"), scale], "scores")
        probs = g.node("Softmax", [g.node("Add", [scores, mask], "masked")], "probs", axis=-1)
        attn = g.node("Transpose", [g.node("MatMul", [probs, v], "pv")], "attn_t", perm=[0, 2, 1, 3])
        attn = g.node("Reshape", [attn, g.ints(1, seq, p.hidden)], "attn")
        o = g.node("MatMul", [attn, g.weight(f"{pre}.self_attn.o_proj.weight", (p.hidden, p.hidden))], "o")
        h = g.node("Add", [h, o], "resid_attn")

        x = _rms_norm(g, h, g.weight(f"{pre}.post_attention_layernorm.weight", (p.hidden,), "norm"))
        if p.experts:
            down = _experts(g, x, pre, seq)
        else:
            gate = g.node("MatMul", [x, g.weight(f"{pre}.mlp.gate_proj.weight", (p.hidden, p.intermediate))], "gate")
            act = g.node("Mul", [gate, g.node("Sigmoid", [gate], "sigmoid")], "silu")
            up = g.node("MatMul", [x, g.weight(f"{pre}.mlp.up_proj.weight", (p.hidden, p.intermediate))], "up")
            down = g.node("MatMul", [g.node("Mul", [act, up], "swiglu"),
                                     g.weight(f"{pre}.mlp.down_proj.weight", (p.intermediate, p.hidden))], "down")
        h = g.node("Add", [h, down], "resid_mlp")

    x = _rms_norm(g, h, g.weight("model.norm.weight", (p.hidden,), "norm"))
    g.nodes.append(helper.make_node("MatMul", [x, g.weight("lm_head.weight", (p.hidden, p.vocab))], ["logits"],
                                    name="MatMul_lm_head"))

    graph = helper.make_graph(g.nodes, f"llama_{mode}", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lpuc samples/shape_only.py")
    model.ir_version = 10
    return model, g, masks


def write(preset: str, out: str | Path, mode: str = "prefill", seq: int = 32, past: int = 127,
          layers: int | None = None, dtype: str = "float16", weights: str = "sparse") -> dict:
    """Write OUT.onnx and OUT.weights; a summary dict."""
    out = Path(out)
    wpath = out.with_suffix(".weights")
    model, g, masks = build(preset, mode, seq, past, layers, dtype, wpath.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    _fill(wpath, g, weights, masks)
    onnx.save(model, str(out))  # the tensors have no raw_data: onnx writes no external data itself
    p = _preset(preset, layers)
    n = param_count(p)
    return dict(preset=preset, mode=mode, layers=p.layers, params=n,
                param_bytes=n * np.dtype(g.np_dtype).itemsize, dtype=dtype, weights=weights,
                model=str(out), weights_file=str(wpath), weights_bytes=g.size, onnx_bytes=out.stat().st_size)


def summary_line(s: dict) -> str:
    return (f"{s['preset']} {s['mode']}: {s['params']:,} params ({_gb(s['param_bytes'])} {s['dtype']}), "
            f"{s['layers']} layers -> {s['model']} ({s['onnx_bytes'] / 1e6:.2f} MB) + {s['weights_file']} "
            f"({_gb(s['weights_bytes'])}, {s['weights']})")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e9:.4f} GB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="shape_only.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a Llama-architecture ONNX model (HF LlamaForCausalLM, opset 20, batch 1, static shapes)\n"
                    "whose weights live in one external-data file OUT.weights beside OUT.onnx,\n"
                    "without allocating them.",
        epilog="presets:\n" + "\n".join(
            f"  {k:11} {v.layers} layers, hidden {v.hidden}, {v.heads} heads x {v.head_dim}, {v.kv_heads} kv heads, "
            f"MLP {v.intermediate}, vocab {v.vocab}, {param_count(v):,} params" for k, v in PRESETS.items())
        + "\n\nexamples:\n"
          "  python samples/shape_only.py llama2-70b --mode decode --past 127 -o /tmp/llama70b_decode.onnx\n"
          "  python samples/shape_only.py tiny --weights random --dtype float32 --seq 7 -o /tmp/tiny.onnx")
    ap.add_argument("preset", choices=sorted(PRESETS), help="model size")
    ap.add_argument("--mode", choices=["prefill", "decode"], default="prefill",
                    help="prefill: inputs input_ids/attention_mask/position_ids [1,SEQ], outputs logits and "
                         "present.{i}.key/value [1,KV,SEQ,D]; decode: one new token at context C = PAST+1 "
                         "(input_ids/position_ids [1,1], attention_mask [1,C], past_key_values.{i}.key/value "
                         "[1,KV,PAST,D] in; logits, present.{i}.* [1,KV,C,D] out)")
    ap.add_argument("--seq", type=int, default=32, help="prefill: prompt tokens (default 32)")
    ap.add_argument("--past", type=int, default=127,
                    help="decode: cache slots before the new token, context - 1 (default 127; 2047 for context 2048)")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                    help="weights and activations (default float16); token ids are int64")
    ap.add_argument("--weights", choices=["sparse", "random"], default="sparse",
                    help="sparse (default): extend OUT.weights to its full length without writing (shapes only; "
                         "seconds and little RAM even for 70B); random: write seeded random weights and the exact "
                         "RoPE tables and mask (to run the model, e.g. tiny, on onnxruntime)")
    ap.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the model file to write")
    a = ap.parse_args(argv)
    if a.layers is not None and a.layers < 1:
        ap.error("--layers must be >= 1")
    try:
        s = write(a.preset, a.output, a.mode, a.seq, a.past, a.layers, a.dtype, a.weights)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_line(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export FULL-SIZE Hugging Face models with the standard exporter (``torch.onnx.export(..., dynamo=True)``)
without allocating their weights.

Where ``shape_only.py`` writes the graph itself with ``onnx.helper``, this script runs the real exporter on the
real transformers classes, at the sizes of ``shape_only.py``'s presets (``shape_only_bert.py`` for BERT), so that
``lpuc compile --no-weights`` can be tried on what a user would actually export. Needs only the ``export`` extra
(``pip install -e .[export]``); nothing is downloaded (``HF_HUB_OFFLINE=1``, every model is built from an
explicit config).

    python samples/export_full_size.py llama2-7b --mode decode --past 2047 -o /tmp/llama7b_decode.onnx
    python samples/export_full_size.py llama2-70b --mode decode --past 4095 -o /tmp/llama70b_decode.onnx
    python samples/export_full_size.py mixtral-8x7b --mode decode --past 4095 -o /tmp/mixtral_decode.onnx
    python samples/export_full_size.py bert-base --seq 128 -o /tmp/bert_base.onnx
    python samples/export_full_size.py llama2-7b --layers 2 --opset 23 -o /tmp/llama7b_l2_op23.onnx
    lpuc compile /tmp/llama7b_decode.onnx --no-weights --precision int8 --state auto --chips 72 -o llama7b.lpu

Models (``--layers`` overrides the layer count, e.g. 2 for a quick check):

- ``llama2-7b``, ``llama2-70b``: ``LlamaForCausalLM``; ``mixtral-8x7b``: ``MixtralForCausalLM`` with
  ``experts_implementation="batched_mm"`` (static shapes, no NonZero), as the bundled samples. float16 by default
  (``--dtype``), eager RMSNorm/softmax up-casts to float32 included, as Hugging Face computes them.
- ``bert-base``: ``BertModel`` without the pooler (the encoder; output ``last_hidden_state``), as
  ``shape_only_bert.py``; ``bert-base-mlm``: ``BertForMaskedLM`` (output the MLM ``logits``, as the ``bert``
  sample). float32 by default. Prefill only.

Inputs and outputs are those of the bundled samples (``export_samples.py``'s ``Decoder`` and ``Encoder`` wrappers,
imported from beside this script), batch 1, every shape static. Decode (default for the decoders) at context
C = PAST + 1: ``input_ids`` [1,1], ``attention_mask`` [1,C], ``position_ids`` [1,1], per layer
``past_key_values.{i}.key/value`` [1,KV,PAST,D] -> ``logits`` [1,1,V], ``present.{i}.key/value`` [1,KV,C,D].
Prefill: ``input_ids``/``attention_mask``/``position_ids`` [1,SEQ] (BERT: ``token_type_ids`` for
``position_ids``). ``--opset 23`` is exported as the ``_op23`` samples are: RMSNorm through
``torch.nn.functional.rms_norm`` (ONNX ``RMSNormalization``) and ``TRANSFORMERS_SDPA_FORCE_GQA=1`` (ONNX
``Attention`` does the GQA); the optimizer fuses ``RotaryEmbedding`` at float32 only (at float16 the Casts of
cos/sin to float16 break its pattern, in a real export too).

How the weights are never allocated:

1. The model and the example inputs are built under a ``FakeTensorMode`` (torch 2.13 has no
   ``torch.onnx.enable_fake_mode``): every parameter is a FakeTensor, which has a shape and a dtype but no
   storage; ``torch.onnx.export(..., dynamo=True, optimize=False)`` traces and translates it.
2. The exporter's own optimizer (``onnxscript.optimizer.optimize_ir`` and ``onnx_fusions.fuse``, what
   ``optimize=True`` runs) is then run here on the exported graph, with the weights standing in as follows.
   A weight larger than the optimizer's folding limit (8192 elements) is a lazy tensor that refuses to be read;
   the optimizer folds only one op on such a weight, a ``Transpose`` that is its only use (``nn.Linear``'s
   ``x @ W.T``): that fold is done here on shapes alone, beforehand, exactly as the optimizer names it (the
   folded initializer takes the Transpose output's name and the permuted shape), so the graph comes out as a
   real export's: weights stored [in, out] and no Transpose. (The rewriter's pattern matcher also looks at
   constants, for scalars or short lists: a lazy weight answers as missing external data does, "not
   available", which is the same no-match.) A smaller weight (norm scales, biases) gets seeded
   random values (distinct, as trained weights are: the optimizer deduplicates equal small initializers).
   Buffers that are computed, not learned (RoPE ``inv_freq``, BERT's ``position_ids``), get their real values
   from their module built for real (small).
3. Every weight initializer that remains becomes ONNX external data in ONE file ``OUT.weights`` beside
   ``OUT.onnx``, which is only extended to its full length (a sparse file: nothing written, as
   ``shape_only.py --weights sparse``); offsets are 4096-aligned. Only the shapes mean anything: compile with
   ``lpuc compile --no-weights`` and run with ``lpuc run --timing-only``. Constants the exporter made (shapes,
   scalars, folded masks, ``inv_freq``) stay inline with their real values.

Checked against real exports (real weights, ``optimize=True``) of every model here at reduced width (2 layers,
hidden 1024, opsets 20 and 23): the same nodes in the same order, the same attributes, the same initializer
names and shapes.

The exporter's per-node stack traces (``pkg.torch.onnx.stack_trace``: absolute paths of this machine) are
stripped, as ``export_samples.py`` does. The file is checked with ``onnx.checker`` and strict ONNX shape
inference (without reading the external data), and must have fully static shapes. The script prints its
progress, the op-type counts and what it wrote.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
import onnxscript.rewriter.onnx_fusions
import torch
import transformers as tf
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import export_samples  # noqa: E402  (beside this script: the Decoder/Encoder wrappers, RMSNorm override, checks)
import shape_only  # noqa: E402  (the Llama/Mixtral presets)
import shape_only_bert  # noqa: E402  (the BERT presets)

ALIGN = shape_only.ALIGN  # byte alignment of each tensor in the weights file, as shape_only.py
FOLD_LIMIT = 8192  # onnxscript's DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT: larger weights stay lazy (never read)
SEED = 0

DECODERS = {"llama2-7b": "llama", "llama2-70b": "llama", "mixtral-8x7b": "mixtral"}
ENCODERS = {"bert-base": "base", "bert-base-mlm": "base"}
MODELS = [*DECODERS, *ENCODERS]
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


# --- the model ---------------------------------------------------------------------------------------------

def config_for(name: str, layers: int | None):
    """The transformers config of NAME, from shape_only.py's / shape_only_bert.py's preset."""
    if name in DECODERS:
        p = shape_only._preset(name, layers)
        common = dict(vocab_size=p.vocab, hidden_size=p.hidden, num_attention_heads=p.heads,
                      num_key_value_heads=p.kv_heads, head_dim=p.head_dim, intermediate_size=p.intermediate,
                      num_hidden_layers=p.layers, max_position_embeddings=p.max_pos, rms_norm_eps=p.rms_eps,
                      rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None)
        if p.experts:
            return tf.MixtralConfig(num_local_experts=p.experts, num_experts_per_tok=p.top_k,
                                    experts_implementation="batched_mm", **common)
        return tf.LlamaConfig(**common)
    p = shape_only_bert.PRESETS[ENCODERS[name]]
    return tf.BertConfig(vocab_size=p.vocab, hidden_size=p.hidden, num_attention_heads=p.heads,
                         intermediate_size=p.intermediate, num_hidden_layers=layers or p.layers,
                         max_position_embeddings=p.max_pos, type_vocab_size=p.type_vocab, layer_norm_eps=p.eps)


class EncoderHidden(export_samples.Encoder):
    """BertModel: (input_ids, attention_mask, token_type_ids) -> last_hidden_state (shape_only_bert.py's output)."""

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # (model.half() cannot swap FakeTensor parameters: build in the dtype instead)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(name: str, config, dtype: torch.dtype, opset: int) -> torch.nn.Module:
    """The wrapped model (call under a FakeTensorMode: its parameters are FakeTensors)."""
    with default_dtype(dtype):
        if name == "bert-base":
            model = tf.BertModel(config, add_pooling_layer=False)
        elif name == "bert-base-mlm":
            model = tf.BertForMaskedLM(config)
        elif isinstance(config, tf.MixtralConfig):
            model = tf.MixtralForCausalLM(config)
        else:
            model = tf.LlamaForCausalLM(config)
    model.eval()
    if opset >= 23:  # as export_samples.build: HF RMSNorm -> F.rms_norm -> ONNX RMSNormalization
        norms = (tf.models.llama.modeling_llama.LlamaRMSNorm, tf.models.mixtral.modeling_mixtral.MixtralRMSNorm)
        for module in model.modules():
            if isinstance(module, norms):
                module.forward = export_samples.rms_norm_forward.__get__(module)
    if name == "bert-base":
        return EncoderHidden(model).eval()
    if name == "bert-base-mlm":
        return export_samples.Encoder(model).eval()
    return export_samples.Decoder(model).eval()


def example_inputs(name: str, config, mode: str, seq: int, past: int, dtype: torch.dtype
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Inputs (call under the FakeTensorMode) and output names, as the bundled samples name them."""
    if name in ENCODERS:
        inputs = {"input_ids": torch.zeros(1, seq, dtype=torch.int64),
                  "attention_mask": torch.ones(1, seq, dtype=torch.int64),
                  "token_type_ids": torch.zeros(1, seq, dtype=torch.int64)}
        return inputs, ["last_hidden_state" if name == "bert-base" else "logits"]
    n = config.num_hidden_layers
    total = seq + past
    inputs = {"input_ids": torch.zeros(1, seq, dtype=torch.int64),
              "attention_mask": torch.ones(1, total, dtype=torch.int64),
              "position_ids": torch.arange(past, total, dtype=torch.int64)[None]}
    if mode == "decode":
        head_dim = config.head_dim
        for i in range(n):
            for kind in ("key", "value"):
                inputs[f"past_key_values.{i}.{kind}"] = torch.zeros(1, config.num_key_value_heads, past, head_dim,
                                                                    dtype=dtype)
    return inputs, ["logits", *(f"present.{i}.{kind}" for i in range(n) for kind in ("key", "value"))]


# --- weights without data ----------------------------------------------------------------------------------

class NotMaterialised(FileNotFoundError):
    """A lazy weight was read. A FileNotFoundError, which the rewriter's pattern matcher takes as "this constant's
    value is not available" (what it does for missing external data): a constant pattern is a scalar or a short
    list, which a weight of more than FOLD_LIMIT elements never matches anyway."""


def _refuse(name: str):
    def read():
        raise NotMaterialised(f"export_full_size: the optimizer tried to read weight {name!r} (never materialised)")
    return read


def real_buffers(wrapper: torch.nn.Module) -> dict[str, np.ndarray]:
    """Computed buffers (RoPE inv_freq, BERT position_ids...) with their real values: each owning module is built
    again for real from the config (all are small but BERT's embeddings, 94 MB)."""
    owners = {}
    for full, buf in wrapper.named_buffers():
        if isinstance(buf, FakeTensor):
            owner, _, attr = full.rpartition(".")
            owners.setdefault(owner, []).append(attr)
    values = {}
    config = wrapper.model.config
    for owner, attrs in owners.items():
        module = wrapper.get_submodule(owner)
        with default_dtype(next(iter(module.parameters()), torch.empty(0)).dtype):
            real = type(module)(config)
        for attr in attrs:
            fake, value = module.get_buffer(attr), real.get_buffer(attr)
            if tuple(fake.shape) != tuple(value.shape) or fake.dtype != value.dtype:
                raise SystemExit(f"FAIL buffer {owner}.{attr}: rebuilt {value.dtype}{tuple(value.shape)}, "
                                 f"fake {fake.dtype}{tuple(fake.shape)}")
            values[f"{owner}.{attr}"] = value.detach().numpy().copy()
        del real
    return values


def stand_in_weights(model: ir.Model, buffers: dict[str, np.ndarray]) -> set[str]:
    """Replace the FakeTensor initializers: computed buffers by their real values, weights above FOLD_LIMIT
    elements by lazy tensors that refuse to be read, smaller weights by seeded random values. Returns the names
    of the weight initializers (those that go to the weights file)."""
    rng = np.random.default_rng(SEED)
    weights = set()
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if not isinstance(getattr(tensor, "raw", None), FakeTensor):
            continue
        if name in buffers:
            value.const_value = ir.tensor(buffers[name], name=name)
            continue
        shape, dtype = ir.Shape(list(tensor.shape)), tensor.dtype
        if math.prod(shape.numpy()) > FOLD_LIMIT:
            value.const_value = ir.LazyTensor(_refuse(name), dtype=dtype, shape=shape)
        else:
            array = (0.02 * rng.standard_normal(shape.numpy())).astype(dtype.numpy())
            value.const_value = ir.tensor(array, name=name)
        weights.add(name)
    return weights


def fold_weight_transposes(model: ir.Model, weights: set[str]) -> int:
    """What onnxscript's constant folding does to a large weight whose only use is a Transpose (it always folds
    Transpose), on shapes alone: the Transpose output becomes an initializer of the permuted shape, named as that
    output. Returns how many were folded."""
    graph = model.graph
    folded = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain != "" or not node.inputs:
            continue
        w = node.inputs[0]
        if w is None or w.name not in weights or not isinstance(w.const_value, ir.LazyTensor) or len(w.uses()) != 1:
            continue
        perm = node.attributes["perm"].as_ints() if "perm" in node.attributes else \
            list(reversed(range(len(w.shape))))
        out = node.outputs[0]
        shape = ir.Shape([w.shape[i] for i in perm])
        new = ir.Value(name=out.name, shape=shape, type=ir.TensorType(w.dtype),
                       const_value=ir.LazyTensor(_refuse(f"{w.name} transposed"), dtype=w.dtype, shape=shape))
        new.metadata_props.update(out.metadata_props)
        out.replace_all_uses_with(new)
        if out in graph.outputs:
            raise SystemExit(f"FAIL a transposed weight is a graph output: {out.name}")
        graph.remove(node, safe=True)
        graph.initializers.pop(w.name)
        out.name = None
        graph.register_initializer(new)
        weights.discard(w.name)
        weights.add(new.name)
        folded += 1
    return folded


def optimize(model: ir.Model) -> None:
    """What torch.onnx.export(optimize=True) runs (onnxscript._framework_apis.torch_2_8.optimize), with the
    large (lazy) weights never handed to the constant folder (its default rules would not fold them either:
    their only foldable use, a Transpose, is folded already)."""
    def should_fold(node: ir.Node):
        if any(v is not None and isinstance(v.const_value, ir.LazyTensor) for v in node.inputs):
            return False
        return None
    onnxscript.optimizer.optimize_ir(model, should_fold=should_fold)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def to_external(model: ir.Model, weights: set[str], location: str) -> int:
    """Every weight initializer becomes external data in `location` at a 4096-aligned offset; the file size."""
    size = 0
    for name, value in model.graph.initializers.items():
        if name not in weights:
            continue
        tensor = value.const_value
        nbytes = math.ceil(math.prod(tensor.shape.numpy()) * tensor.dtype.itemsize)
        offset = -(-size // ALIGN) * ALIGN
        value.const_value = ir.ExternalTensor(location, offset, nbytes, tensor.dtype, shape=tensor.shape, name=name)
        size = offset + nbytes
    return size


# --- export ------------------------------------------------------------------------------------------------

def export(name: str, out: Path, mode: str, seq: int, past: int, layers: int | None, opset: int, dtype: str) -> dict:
    t0 = time.perf_counter()
    config = config_for(name, layers)
    torch_dtype = TORCH_DTYPES[dtype]
    # As export_samples.export: at opset 23 sdpa gets K/V with fewer heads (ONNX Attention does the GQA).
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1" if opset >= 23 else "0"
    print(f"[1/5] {name}: {type(config).__name__}, {config.num_hidden_layers} layers, {mode}, "
          f"{'past ' + str(past) if mode == 'decode' else 'seq ' + str(seq)}, {dtype}, opset {opset}; "
          "building under FakeTensorMode (no weights allocated)", flush=True)
    with FakeTensorMode():
        wrapper = build_model(name, config, torch_dtype, opset)
        inputs, outputs = example_inputs(name, config, mode, seq, past, torch_dtype)
        params = sum(p.numel() for p in wrapper.parameters())
        print(f"[2/5] torch.onnx.export(dynamo=True, optimize=False, opset_version={opset}): {params:,} params "
              f"({params * torch_dtype.itemsize / 1e9:.2f} GB {dtype}, fake)", flush=True)
        program = torch.onnx.export(wrapper, tuple(inputs.values()), dynamo=True, optimize=False,
                                    opset_version=opset, verbose=False)
    model = program.model
    t1 = time.perf_counter()

    buffers = real_buffers(wrapper)
    weights = stand_in_weights(model, buffers)
    folded = fold_weight_transposes(model, weights)
    print(f"[3/5] exported in {t1 - t0:.1f} s: {len(weights)} weight initializers, buffers with real values "
          f"{sorted(buffers)}; {folded} weight Transposes folded; running the exporter's optimizer", flush=True)
    optimize(model)
    # As the exporter does after optimizing: the graph inputs and outputs take the given names.
    if len(model.graph.inputs) != len(inputs) or len(model.graph.outputs) != len(outputs):
        raise SystemExit(f"FAIL {len(model.graph.inputs)} inputs / {len(model.graph.outputs)} outputs, "
                         f"expected {len(inputs)} / {len(outputs)}")
    for value, new in [*zip(model.graph.inputs, inputs), *zip(model.graph.outputs, outputs)]:
        value.metadata_props["pkg.torch.onnx.original_node_name"] = str(value.name)
        value.name = new
    weights &= set(model.graph.initializers)
    lazy_left = [n for n in weights if isinstance(model.graph.initializers[n].const_value, ir.LazyTensor)]

    wpath = out.with_suffix(".weights")
    wbytes = to_external(model, weights, wpath.name)
    proto = ir.serde.serialize_model(model)
    for node in export_samples.all_nodes(proto):  # stack traces hold absolute paths of this machine: drop them
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(wpath, "wb") as f:  # sparse: only its length is set
        f.truncate(wbytes)
    onnx.save(proto, str(out))
    t2 = time.perf_counter()
    print(f"[4/5] optimized and written in {t2 - t1:.1f} s", flush=True)

    onnx.checker.check_model(str(out))  # by path: external data is looked for beside the model, not read
    proto = onnx.load(str(out), load_external_data=False)
    graph = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True).graph
    export_samples.check([i.name for i in graph.input] == list(inputs), f"inputs {[i.name for i in graph.input]}")
    export_samples.check([o.name for o in graph.output] == outputs, f"outputs {[o.name for o in graph.output]}")
    values = [*graph.input, *graph.output, *graph.value_info]
    untyped = {o for n in graph.node for o in n.output if o} - {v.name for v in values}
    dynamic = export_samples.dynamic_values(values) + sorted(untyped)
    export_samples.check(not dynamic, f"non-static shapes for {dynamic[:10]}")
    ops = collections.Counter(n.op_type for n in export_samples.all_nodes(proto))
    export_samples.check("NonZero" not in ops, "data-dependent NonZero in graph")
    external = sum(1 for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    print(f"[5/5] onnx.checker and strict shape inference pass, every shape static; "
          f"{sum(ops.values())} nodes: {dict(sorted(ops.items()))}", flush=True)
    return dict(name=name, params=params, model=str(out), onnx_bytes=out.stat().st_size, weights_file=str(wpath),
                weights_bytes=wbytes, external=external, inline=len(proto.graph.initializer) - external,
                lazy_left=len(lazy_left), seconds=time.perf_counter() - t0, nodes=sum(ops.values()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="export_full_size.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2],
        epilog="models:\n"
               + "\n".join(f"  {k:13} {v}" for k, v in {
                   "llama2-7b": "LlamaForCausalLM, 32 layers, hidden 4096, 32 heads, MLP 11008, vocab 32000",
                   "llama2-70b": "LlamaForCausalLM, 80 layers, hidden 8192, 64 q / 8 kv heads, MLP 28672",
                   "mixtral-8x7b": "MixtralForCausalLM, 32 layers, hidden 4096, 32 q / 8 kv heads, 8 experts "
                                   "top-2, MLP 14336, batched_mm",
                   "bert-base": "BertModel (no pooler), 12 layers, hidden 768, 12 heads, MLP 3072, vocab 30522",
                   "bert-base-mlm": "BertForMaskedLM, the same with the MLM head (output logits)"}.items())
               + "\n\nWeights are never allocated (FakeTensorMode); OUT.weights is a sparse file: compile with\n"
                 "`lpuc compile OUT.onnx --no-weights`. See the module docstring for details.")
    ap.add_argument("name", choices=MODELS, metavar="NAME", help=f"one of {', '.join(MODELS)}")
    ap.add_argument("--mode", choices=["decode", "prefill"], default=None,
                    help="decode (default for the decoders): one new token after --past cached ones; prefill "
                         "(BERT's only mode): --seq tokens")
    ap.add_argument("--past", type=int, default=2047, help="decode: cache slots before the new token (default 2047)")
    ap.add_argument("--seq", type=int, default=None, help="prefill: tokens (default 128 for BERT, 32 otherwise)")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (e.g. 2 for a quick check)")
    ap.add_argument("--opset", type=int, choices=[20, 23], default=20,
                    help="20 (default): decomposed attention/RMSNorm/RoPE; 23: ONNX Attention and RMSNormalization, as "
                         "the _op23 samples (RotaryEmbedding only at float32: at float16 the Casts of cos/sin "
                         "keep the optimizer from fusing it)")
    ap.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                    help="weights and activations (default float16 for the decoders, float32 for BERT)")
    ap.add_argument("-o", "--output", required=True, metavar="OUT.onnx",
                    help="the model file to write (its weights: OUT.weights beside it)")
    a = ap.parse_args(argv)
    mode = a.mode or ("prefill" if a.name in ENCODERS else "decode")
    if a.name in ENCODERS and mode != "prefill":
        ap.error("BERT is exported in prefill mode only")
    seq = 1 if mode == "decode" else (a.seq or (128 if a.name in ENCODERS else 32))
    past = a.past if mode == "decode" else 0
    if a.layers is not None and a.layers < 1:
        ap.error("--layers must be >= 1")
    if seq < 1 or (mode == "decode" and past < 1):
        ap.error("need --seq >= 1 and, in decode mode, --past >= 1")
    dtype = a.dtype or ("float32" if a.name in ENCODERS else "float16")
    s = export(a.name, Path(a.output), mode, seq, past, a.layers, a.opset, dtype)
    print(f"wrote {s['model']} ({s['onnx_bytes'] / 1e6:.2f} MB, {s['nodes']} nodes, {s['inline']} inline "
          f"initializers) + {s['weights_file']} ({s['weights_bytes'] / 1e9:.2f} GB sparse, {s['external']} external "
          f"initializers, nothing written); {s['params']:,} params; {s['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""samples/shape_only.py: Llama and Mixtral models at real sizes with external (sparse) weights.

The tiny preset with random weights runs on ONNX Runtime and on lpuc's reference evaluator and must agree;
the real-size presets must import without their weights being read, and count HF's parameters."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import onnx
import pytest

from lpuc.compiler.driver import load_model
from lpuc.ir import DType
from lpuc.ir.evaluator import evaluate

from helpers import SAMPLES, max_rel_error, run_ort

spec = importlib.util.spec_from_file_location("samples_shape_only", SAMPLES / "shape_only.py")
shape_only = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = shape_only  # dataclasses look their module up there
spec.loader.exec_module(shape_only)

TINY = shape_only.PRESETS["tiny"]
SEQ, PAST, FILLED = 7, 5, 3


def _write(tmp_path, name, *args):
    out = tmp_path / f"{name}.onnx"
    assert shape_only.main([*args, "-o", str(out)]) == 0
    return out


def _inputs(mode: str, dtype=np.float32) -> dict[str, np.ndarray]:
    """Prefill: SEQ tokens. Decode: a token at position FILLED over a cache whose slots FILLED.. are unused (mask 0,
    random K/V that only the mask keeps out)."""
    rng = np.random.default_rng(1)
    if mode == "prefill":
        return {"input_ids": rng.integers(0, TINY.vocab, (1, SEQ)), "attention_mask": np.ones((1, SEQ), np.int64),
                "position_ids": np.arange(SEQ)[None]}
    mask = np.zeros((1, PAST + 1), np.int64)
    mask[:, :FILLED] = mask[:, -1] = 1
    inputs = {"input_ids": rng.integers(0, TINY.vocab, (1, 1)), "attention_mask": mask,
              "position_ids": np.array([[FILLED]])}
    for i in range(TINY.layers):
        for kind in ("key", "value"):
            inputs[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (1, TINY.kv_heads, PAST, TINY.head_dim)).astype(dtype)
    return inputs


def _external(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_tiny_float32_matches_onnxruntime(tmp_path, mode, preset):
    path = _write(tmp_path, f"{preset}_{mode}", preset, "--mode", mode, "--seq", str(SEQ), "--past", str(PAST),
                  "--dtype", "float32", "--weights", "random")
    module, report = load_model(path)
    assert report.supported == report.total > 0, report.summary()
    inputs = _inputs(mode)
    ref = run_ort(path, inputs)
    expected = {"logits": (1, 1 if mode == "decode" else SEQ, TINY.vocab)}
    for i in range(TINY.layers):
        for kind in ("key", "value"):
            expected[f"present.{i}.{kind}"] = (1, TINY.kv_heads, PAST + 1 if mode == "decode" else SEQ, TINY.head_dim)
            if mode == "decode":  # the cache is the past followed by the new token's K/V
                assert np.array_equal(ref[f"present.{i}.{kind}"][:, :, :PAST], inputs[f"past_key_values.{i}.{kind}"])
    assert {k: v.shape for k, v in ref.items()} == expected
    ours = evaluate(module, inputs)
    for name in expected:
        assert np.abs(ref[name]).max() > 0.1, f"{name} is degenerate"
        assert max_rel_error(ours[name], ref[name]) <= 1e-4, name


def _numpy_llama(w: dict, ids: np.ndarray, past: list | None = None):
    """HF LlamaForCausalLM's forward in float64 numpy (weights as the script stores them: [in, out]).
    Returns the logits and the per-layer (key, value) cache after RoPE, before the GQA repeat."""
    p, hd = TINY, TINY.head_dim
    n, start = ids.shape[1], 0 if past is None else past[0][0].shape[2]
    pos = np.arange(start, start + n)
    inv = 1.0 / p.rope_theta ** (np.arange(0, hd, 2) / hd)
    emb = np.concatenate([np.outer(pos, inv)] * 2, axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)

    def norm(x, g):
        return g * x / np.sqrt((x * x).mean(-1, keepdims=True) + p.rms_eps)

    def rope(x):  # [heads, n, hd]
        return x * cos + np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1) * sin

    h, cache = w["model.embed_tokens.weight"][ids[0]], []
    for i in range(p.layers):
        pre = f"model.layers.{i}."
        x = norm(h, w[pre + "input_layernorm.weight"])
        q, k, v = (x @ w[pre + f"self_attn.{c}_proj.weight"] for c in "qkv")
        q = rope(q.reshape(n, p.heads, hd).transpose(1, 0, 2))
        k = rope(k.reshape(n, p.kv_heads, hd).transpose(1, 0, 2))
        v = v.reshape(n, p.kv_heads, hd).transpose(1, 0, 2)
        if past is not None:
            k, v = np.concatenate([past[i][0][0], k], 1), np.concatenate([past[i][1][0], v], 1)
        cache.append((k[None], v[None]))
        rep = p.heads // p.kv_heads
        k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.where(np.arange(start + n)[None] <= pos[:, None], s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = (a / a.sum(-1, keepdims=True)) @ v
        h = h + a.transpose(1, 0, 2).reshape(n, -1) @ w[pre + "self_attn.o_proj.weight"]
        x = norm(h, w[pre + "post_attention_layernorm.weight"])
        g = x @ w[pre + "mlp.gate_proj.weight"]
        h = h + (g / (1 + np.exp(-g)) * (x @ w[pre + "mlp.up_proj.weight"])) @ w[pre + "mlp.down_proj.weight"]
    return (norm(h, w["model.norm.weight"]) @ w["lm_head.weight"])[None], cache


def test_tiny_is_hugging_face_llama(tmp_path):
    """The graph computes HF Llama (checked against a numpy forward): prefill of 6 tokens gives the logits and the
    cache; decode of the 6th token at context 9 on the numpy cache of the first 5 (slots 0-4; slots 5-7 random
    with mask 0) gives the prefill's last logits and, in slots 0-4 and 8, the full cache."""
    args = ["tiny", "--dtype", "float32", "--weights", "random"]
    prefill = _write(tmp_path, "prefill", *args, "--seq", "6")
    decode = _write(tmp_path, "decode", *args, "--mode", "decode", "--past", "8")
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(prefill)).graph.initializer}
    ids = np.random.default_rng(3).integers(0, TINY.vocab, (1, 6))
    logits, cache = _numpy_llama(w, ids)
    out = run_ort(prefill, {"input_ids": ids, "attention_mask": np.ones((1, 6), np.int64),
                            "position_ids": np.arange(6)[None]})
    assert max_rel_error(out["logits"], logits) <= 1e-5
    for i, (k, v) in enumerate(cache):
        assert max_rel_error(out[f"present.{i}.key"], k) <= 1e-5
        assert max_rel_error(out[f"present.{i}.value"], v) <= 1e-5
    _, past = _numpy_llama(w, ids[:, :5])
    rng = np.random.default_rng(4)
    feed = {"input_ids": ids[:, 5:], "attention_mask": np.array([[1, 1, 1, 1, 1, 0, 0, 0, 1]]),
            "position_ids": np.array([[5]])}
    for i, layer in enumerate(past):
        for kind, cached in zip(("key", "value"), layer):
            feed[f"past_key_values.{i}.{kind}"] = rng.standard_normal((1, TINY.kv_heads, 8, TINY.head_dim), np.float32)
            feed[f"past_key_values.{i}.{kind}"][:, :, :5] = cached
    out = run_ort(decode, feed)
    assert max_rel_error(out["logits"], logits[:, 5:]) <= 1e-5
    slots = [0, 1, 2, 3, 4, 8]
    for i, (k, v) in enumerate(cache):
        assert max_rel_error(out[f"present.{i}.key"][:, :, slots], k) <= 1e-5
        assert max_rel_error(out[f"present.{i}.value"][:, :, slots], v) <= 1e-5


def test_tiny_float16_imports_and_evaluates(tmp_path):
    path = _write(tmp_path, "tiny16", "tiny", "--seq", str(SEQ), "--weights", "random")
    module, report = load_model(path)
    assert report.supported == report.total
    assert {v.type.dtype for _, v in module.outputs} == {DType.f16}
    inputs = _inputs("prefill")
    ref = run_ort(path, inputs)["logits"]
    assert ref.dtype == np.float16
    assert max_rel_error(evaluate(module, inputs)["logits"], ref) <= 1e-2


def _sparse_files_supported(tmp_path) -> bool:
    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(64 << 20)
    blocks = os.stat(probe).st_blocks * 512
    probe.unlink()
    return blocks < (1 << 20)


def test_llama2_7b_sparse_imports_without_reading_weights(tmp_path, capsys):
    path = _write(tmp_path, "llama7b", "llama2-7b", "--layers", "2")
    line = capsys.readouterr().out
    assert f"{shape_only.param_count('llama2-7b', 2):,} params" in line and "2 layers" in line
    weights = path.with_suffix(".weights")
    assert path.stat().st_size < 1 << 20

    model = onnx.load(str(path), load_external_data=False)
    ext = _external(model)
    assert {e.value for t in ext for e in t.external_data if e.key == "location"} == {weights.name}
    # every tensor bigger than 1 KiB is external; the rest (shape constants, scalars) are inline
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(t.raw_data) + 8 * len(t.int64_data) + 4 * len(t.float_data) < 1024 for t in inline)
    spans = sorted((int(d["offset"]), int(d["length"])) for d in
                   ({e.key: e.value for e in t.external_data} for t in ext))
    assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:])), "tensors overlap"
    end = spans[-1][0] + spans[-1][1]
    assert weights.stat().st_size == end
    assert sum(n for _, n in spans) >= 2 * shape_only.param_count("llama2-7b", 2)  # float16
    if _sparse_files_supported(tmp_path):
        assert os.stat(weights).st_blocks * 512 < end // 1000, "weights file is not sparse"

    weights.rename(tmp_path / "elsewhere")  # the frontend must not need the weights at all
    module, report = load_model(path)
    assert report.supported == report.total
    (name, logits), *present = module.outputs
    assert name == "logits"
    assert logits.type.shape == (1, 32, 32000) and logits.type.dtype is DType.f16
    assert {n: v.type.shape for n, v in present} == {
        f"present.{i}.{kind}": (1, 32, 32, 128) for i in range(2) for kind in ("key", "value")}


def test_llama2_70b_decode_imports(tmp_path):
    """GQA (64 q / 8 kv heads) at full width, one layer, decode with the default 127 cached tokens."""
    path = _write(tmp_path, "llama70b", "llama2-70b", "--mode", "decode", "--layers", "1")
    module, report = load_model(path)
    assert report.supported == report.total
    shapes = {n: v.type.shape for n, v in module.outputs}
    assert shapes == {"logits": (1, 1, 32000), "present.0.key": (1, 8, 128, 128), "present.0.value": (1, 8, 128, 128)}
    assert {v.name: v.type.shape for v in module.inputs} == {
        "input_ids": (1, 1), "attention_mask": (1, 128), "position_ids": (1, 1),
        "past_key_values.0.key": (1, 8, 127, 128), "past_key_values.0.value": (1, 8, 127, 128)}


def test_llama2_7b_decode_at_context_2048_imports(tmp_path):
    """The HF decode-with-past layout at Llama-2-7B's published context: 2047 past slots plus the new token."""
    path = _write(tmp_path, "llama7b_decode", "llama2-7b", "--mode", "decode", "--past", "2047", "--layers", "1")
    module, report = load_model(path)
    assert report.supported == report.total
    inputs = {v.name: v.type.shape for v in module.inputs}
    assert inputs["attention_mask"] == (1, 2048) and inputs["past_key_values.0.key"] == (1, 32, 2047, 128)
    assert dict(module.outputs)["present.0.value"].type.shape == (1, 32, 2048, 128)


def test_param_counts_match_hugging_face():
    assert shape_only.param_count("llama2-7b") == 6_738_415_616
    assert abs(shape_only.param_count("llama2-7b") / 6.74e9 - 1) < 0.01
    assert shape_only.param_count("llama2-70b") == 68_976_648_192
    assert abs(shape_only.param_count("llama2-70b") / 68.98e9 - 1) < 0.01
    assert shape_only.param_count("llama2-7b", layers=2) < shape_only.param_count("llama2-7b")
    assert shape_only.param_count("mixtral-8x7b") == 46_702_792_704  # MixtralForCausalLM's 46.7B


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        shape_only.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--mode", "--seq", "--past", "--layers", "--dtype", "--weights", "sparse", "llama2-70b"):
        assert word in text

"""Deployment layouts (`--layout tp=T,pp=P`, compiler.partition.Layout): pipeline stages of tensor-parallel
chips. The samples at each layout must match onnxruntime (tests/test_many_chips.py); here, generation at a
layout must give Hugging Face's greedy tokens, and the layout's placement rules must hold on a model of
several layers wider than one vector."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest

from lpuc.compiler.driver import compile_model, load_model
from lpuc.compiler.frontend.state import make_stateful
from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program
from lpuc.compiler.cache_scores import score_cache_before_write
from lpuc.compiler.experts import dense_experts, expert_chains
from lpuc.compiler.fuse_matmuls import fuse_matmuls
from lpuc.compiler.grouped_heads import GroupHeads
from lpuc.compiler.paired_matmuls import pair_matmuls
from lpuc.compiler.generate import compile_generation, generate, state_layout, step_tokens_per_s
from lpuc.compiler.serving import exchange_chains, physical_bound, pipelined
from lpuc.compiler.partition import Layout, parse_layout, partition
from lpuc.compiler.pipeline import CompileOptions, compile_module
from lpuc.compiler.replicated_kv import copies, replicate_kv
from lpuc.compiler.split_heads import split_heads
from lpuc.ir import LpucError, Op
from lpuc.ir.attributes import AttrDict
from lpuc.ir.evaluator import evaluate
from lpuc.ir.machine import read_machine
from lpuc.ir.registry import OPS
from lpuc.ir.schedule_facts import view_bases
from lpuc.ir.target import Target

from helpers import SAMPLES, max_rel_error, run_ort

MACHINE, MACHINE_TEXT = read_machine("tsp-v1")
spec = importlib.util.spec_from_file_location("samples_shape_only", SAMPLES / "shape_only.py")
shape_only = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = shape_only
spec.loader.exec_module(shape_only)


DECODERS = ("gpt2_decode", "llama_decode", "gemma_decode", "mixtral_decode", "llama_decode_op23",
            "mixtral_decode_op23")


@pytest.mark.parametrize("sample,layout", [(s, "tp=2") for s in DECODERS]
                         + [("llama_decode", "tp=2,pp=2"), ("llama_decode", "tp=6"), ("mixtral_decode", "tp=4,pp=2"),
                            ("mixtral_decode", "tp=4,pp=2,ep=4"), ("mixtral_decode_op23", "tp=2,ep=2"),
                            # stages over two nodes: each node's first chip keeps the residual stream
                            # (compiler/node_residual.py); the MLPs fall on the second node's chips alone
                            ("llama_decode", "tp=16"), ("llama_decode", "tp=16,pp=2"), ("mixtral_decode", "tp=16")])
def test_generation_at_a_layout_gives_hugging_face_greedy_tokens(sample, layout):
    step, first = compile_generation(SAMPLES / f"{sample}.onnx", SAMPLES / f"{sample.replace('_decode', '_prefill')}.onnx",
                                     layout=layout, scheduler="list")
    with np.load(SAMPLES / f"{sample}.generate.npz") as f:
        prompt, tokens = f["prompt"], f["tokens"]
    assert step.target.chips == parse_layout(layout).chips
    assert generate(step, prompt, tokens.shape[1], first).tokens.tolist() == tokens.tolist()


@pytest.fixture(scope="module")
def five_layers(tmp_path_factory):
    """Tiny Llama decode (samples/shape_only.py, random weights) with 5 layers (hidden 352: wider than one
    320-lane vector, not a multiple of it), its cache resident."""
    out = tmp_path_factory.mktemp("five") / "five.onnx"
    assert shape_only.main(["tiny", "--mode", "decode", "--past", "6", "--layers", "5", "--weights", "random",
                            "-o", str(out)]) == 0
    return make_stateful(load_model(out)[0])


def test_stages_are_contiguous_and_a_stages_layers_keep_their_caches_on_its_chips_in_turn(five_layers):
    layout = Layout(tp=4, pp=2)
    placed = partition(five_layers, Target(MACHINE, layout.chips), "layout", layout)
    ops = [op for op in placed.ops if op.name != "graph.constant"]
    stages = [op.attrs.get("chip", 0) // layout.tp for op in ops]
    assert stages == sorted(stages) and set(stages) == {0, 1}  # contiguous, both used
    writes = [op.attrs.get("chip", 0) for op in ops if OPS[op.name].in_place]  # K and V per layer
    assert len(writes) == 10
    per_layer = writes[::2]
    assert writes[1::2] == per_layer  # a layer's K and V on one chip
    for stage in (0, 1):
        chips = [c for c in per_layer if c // layout.tp == stage]
        assert len(set(chips)) == min(len(chips), layout.tp)  # a stage's layers on its chips in turn
    for op in ops:
        assert all(c // layout.tp == op.attrs.get("chip", 0) // layout.tp for c in op.attrs.get("parts", ()))
    # a split op takes as many of its stage's chips as it has tiles: the MLP's 700 columns are 3
    assert max(len(op.attrs.get("parts", ())) for op in ops) == 3


def test_a_layout_too_small_for_the_weights_names_the_chip(five_layers):
    small = dataclasses.replace(MACHINE, sram=dataclasses.replace(MACHINE.sram, words_per_slice=8))
    with pytest.raises(LpucError, match=r"layout tp=1,pp=2 puts .* MiB .* on chip \d, which holds .*: more stages"):
        partition(five_layers, Target(small, 2), "layout", Layout(tp=1, pp=2))


def test_attention_runs_by_head_groups_on_the_chips_of_its_stage():
    step = compile_generation(SAMPLES / "gpt2_decode.onnx", layout="tp=2,pp=2", scheduler="list")[0]
    where = state_layout(step)
    heads = {op.attrs["name"]: op.result.type.shape for op in step.module.ops if op.name == "mem.state"}
    # gpt2_decode: 2 layers of 6 heads; each cache cut in two groups of 3 heads, on chips 0 and 1 of its stage
    assert sorted(where) == [f"past_key_values.{i}.{kv}.heads{h}-{h + 2}" for i in (0, 1) for kv in ("key", "value")
                             for h in (0, 3)]
    assert all(shape[1] == 3 for shape in heads.values())
    for name, (chip, _) in where.items():
        layer, group = int(name.split(".")[1]), int(name.split("heads")[1].split("-")[0]) // 3
        assert chip == 2 * layer + group


def test_splitting_heads_computes_the_same(five_layers):
    """The split module and the whole one agree on the reference evaluator, over several steps."""
    split = split_heads(five_layers, 4)  # KV heads 2: two groups of one head
    names = sorted(op.attrs["name"] for op in split.ops if op.name == "graph.state")
    assert len(names) == 20 and all(".heads" in n for n in names)
    assert split_heads(five_layers, 1) is five_layers
    rng = np.random.default_rng(0)
    for pos in (0, 3, 6):  # (a fresh cache each time: the evaluator keeps no state between runs)
        feeds = {"input_ids": rng.integers(0, 400, (1, 1)), "position_ids": np.asarray([[pos]]),
                 "attention_mask": rng.integers(0, 2, (1, 7))}
        whole, parts = evaluate(five_layers, feeds)["logits"], evaluate(split, feeds)["logits"]
        assert np.abs(whole).max() > 0 and np.array_equal(whole, parts)


def test_a_head_group_computes_its_own_q_k_v_and_rows_of_the_output_projection(five_layers):
    """With the query heads grouped by KV head (the pipeline's GroupHeads), the attention splits too: each group
    computes its q, k and v by its columns of their weights (pulled back through RoPE, reshapes and
    transposes), and the output projection becomes one matmul per group by its rows, added on each chip, then
    over the chips."""
    grouped = GroupHeads().run(five_layers, Target(MACHINE, 1))
    split = split_heads(grouped, 4, chips=2)  # 2 KV heads: 2 groups
    rows = [op for op in split.ops if op.name == "graph.matmul" and ".rows" in op.operands[1].name]
    assert len(rows) == 5 * 2 and {op.attrs["group"] for op in rows} == {0, 1}
    assert {op.operands[1].type.shape for op in rows} == {(176, 352)}  # 352 rows: 2 heads x 88 columns
    # and each group computes its own q, k and v by its columns of their weights: no slice of a whole one
    columns = [op for op in split.ops if op.name == "graph.matmul" and "group" in op.attrs
               and op.operands[1].name.startswith("model.layers.") and ".rows" not in op.operands[1].name]
    assert sorted({op.operands[1].type.shape for op in columns}) == [(352, 88), (352, 176)]  # k, v; q (2 heads)
    assert len(columns) == 5 * 2 * 3
    made = {r.name: op for op in split.ops for r in op.results}
    assert not [op for op in split.ops if op.name == "graph.slice" and "group" in op.attrs
                and "group" not in made[op.operands[0].name].attrs]  # (RoPE's halves of a group's own k are)
    rng = np.random.default_rng(0)
    for pos in (0, 6):
        feeds = {"input_ids": rng.integers(0, 400, (1, 1)), "position_ids": np.asarray([[pos]]),
                 "attention_mask": np.ones((1, 7), np.int64)}
        whole, parts = evaluate(grouped, feeds)["logits"], evaluate(split, feeds)["logits"]
        assert np.abs(whole).max() > 0 and max_rel_error(parts, whole) <= 1e-2  # (float16: the sum's order)


def test_copies_of_the_kv_heads_fill_a_stage_wider_than_them():
    assert copies(8, 8, 32) == 4   # Llama-2-70B at tp=32: 32 copies, 2 query heads each
    assert copies(8, 8, 24) == 2   # 16 groups on 24 chips (a third copy would not divide the 8 query heads)
    assert copies(8, 4, 72) == 4 and copies(8, 8, 72) == 8  # Mixtral, 70B at tp=72: a query head a copy
    assert copies(2, 3, 4) == 1 and copies(32, 1, 24) == 1  # (3 copies exceed 4 chips; no query heads to share)


def test_a_layouts_kv_caps_the_copies_and_a_layout_that_does_not_fit_tries_fewer_first(five_layers):
    """kv=S keeps each KV head in at most S copies (kv=1: none); a default layout that does not fit gives way
    to itself with the next fewer copies before a narrower one (Llama-2-70B: tp=72 fits with 4 copies, not 8)."""
    from lpuc.compiler.pipeline import fewer_copies
    from lpuc.compiler.replicated_kv import planned_copies

    assert copies(8, 8, 72, most=4) == 4 and copies(8, 8, 72, most=3) == 2 and copies(8, 8, 72, most=1) == 1
    assert planned_copies(five_layers, 4) == 2 and planned_copies(five_layers, 4, most=1) == 1
    assert replicate_kv(five_layers, 4, most=1) is five_layers
    assert fewer_copies(five_layers, "tp=4,pp=1") == "tp=4,pp=1,kv=1"
    assert fewer_copies(five_layers, "tp=4,pp=1,kv=1") is None and fewer_copies(five_layers, "tp=2,pp=2") is None


def test_kv_heads_in_copies_give_each_chip_a_head_group_and_compute_the_same(five_layers):
    """2 KV heads of 2 query heads each, at 4 chips: each KV head twice in the cache, so each chip has a group
    of one query head, computing its own q, k and v and its rows of the output projection."""
    copied = replicate_kv(five_layers, 4)
    assert replicate_kv(five_layers, 2) is five_layers
    shapes = {op.result.type.shape for op in copied.ops if op.name == "graph.state"}
    assert shapes == {(1, 4, 7, 88)} and sum(op.name == "graph.state" for op in copied.ops) == 10
    split = split_heads(GroupHeads().run(copied, Target(MACHINE, 1)), 8, chips=4)
    assert len([op for op in split.ops if op.name == "graph.state"]) == 40
    rows = [op for op in split.ops if op.name == "graph.matmul" and ".rows" in op.operands[1].name]
    assert {op.attrs["group"] for op in rows} == {0, 1, 2, 3} and {op.operands[1].type.shape for op in rows} == {(88, 352)}
    columns = [op for op in split.ops if op.name == "graph.matmul" and "group" in op.attrs
               and op.operands[1].name.startswith("model.layers.") and ".rows" not in op.operands[1].name]
    assert {op.operands[1].type.shape for op in columns} == {(352, 88)} and len(columns) == 5 * 4 * 3
    rng = np.random.default_rng(0)
    for pos in (0, 6):
        feeds = {"input_ids": rng.integers(0, 400, (1, 1)), "position_ids": np.asarray([[pos]]),
                 "attention_mask": np.ones((1, 7), np.int64)}
        whole = evaluate(five_layers, feeds)["logits"]
        assert np.abs(whole).max() > 0 and np.array_equal(evaluate(copied, feeds)["logits"], whole)
        assert max_rel_error(evaluate(split, feeds)["logits"], whole) <= 1e-2  # (float16: the sum's order)


@pytest.mark.parametrize("layout, stages", [(None, 1), ("tp=2,pp=2", 2), ("pp=4", 4)])
def test_pipelined_serving_is_bounded_by_its_busiest_resource_and_its_stages(layout, stages):
    step = compile_generation(SAMPLES / "llama_decode.onnx", layout=layout, scheduler="list")[0]
    stats = interpreter.run(step, timing_only=True).stats
    served = pipelined(step, stats)
    one = step_tokens_per_s(step)
    assert served["stages"] == stages and 1 <= served["in_flight"] <= stages
    busiest = max([*stats.busy.values(), *(link.busy for link in stats.links)])
    assert served["busiest_cycles"] == busiest <= stats.cycles
    hz = step.machine.clock_mhz * 1e6
    assert served["aggregate_tokens_per_s"] == pytest.approx(min(served["in_flight"] * one, hz / busiest), rel=1e-6)
    assert one * (1 - 1e-6) <= served["aggregate_tokens_per_s"] <= stages * one * (1 + 1e-6)


def test_auto_compares_the_layouts_and_keeps_the_fastest():
    module, summary = compile_module(load_model(SAMPLES / "llama_decode.onnx")[0], MACHINE,
                                     CompileOptions(scheduler="list", layout="auto", chips=8, precision="fp32"))
    tried = dict(summary.candidates)
    assert list(tried) == ["tp=1,pp=8", "tp=2,pp=4", "tp=4,pp=2", "tp=8,pp=1"]
    assert summary.partition == min(tried, key=lambda k: int(tried[k]))


@pytest.mark.parametrize("chips, partition", [(8, {"pipeline", "tensor"}), (16, {"tp=8,pp=2"})])
def test_the_default_layout_is_a_node_per_stage_from_two_nodes_on(chips, partition):
    graph = load_model(SAMPLES / "llama_decode.onnx")[0]
    summary = compile_module(graph, MACHINE, CompileOptions(scheduler="list", chips=chips, precision="fp32"))[1]
    assert summary.partition in partition


@pytest.mark.parametrize("sample", ["mixtral_decode", "mixtral_prefill", "mixtral_decode_op23"])
def test_dense_experts_compute_what_the_gathered_ones_do(sample):
    graph = load_model(SAMPLES / f"{sample}.onnx")[0]
    dense = dense_experts(graph)
    names = [op.name for op in graph.ops]
    assert names.count("graph.gather_nd") - [op.name for op in dense.ops].count("graph.gather_nd") == 4  # 2 layers
    assert not any(op.name == "graph.constant" and op.result.type.rank == 3 and op.result.type.shape[0] == 4
                   for op in dense.ops)  # the stacked tables of 4 experts are gone
    with np.load(SAMPLES / f"{sample}.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    ours, theirs = evaluate(dense, inputs), evaluate(graph, inputs)
    for name, want in theirs.items():
        assert np.allclose(ours[name], want, rtol=1e-5, atol=1e-6), name
    assert dense_experts(load_model(SAMPLES / "llama_decode.onnx")[0]).ops == load_model(SAMPLES / "llama_decode.onnx")[0].ops


@pytest.mark.parametrize("sample, layout, scheduler", [
    ("llama_decode", None, "list"), ("llama_decode", "tp=2,pp=2", "list"), ("llama_decode", "tp=8,pp=1", "cpsat"),
    ("mixtral_decode", "tp=4,pp=2,ep=4", "list"), ("gpt2_decode", "tp=4,pp=2", "cpsat"),
    ("gemma_decode", "tp=2,pp=4", "list")])
def test_the_physical_bound_is_below_the_schedule(sample, layout, scheduler):
    """Below every schedule, whatever the scheduler; at a layout it counts the exchanges inside a stage."""
    step = compile_generation(SAMPLES / f"{sample}.onnx", layout=layout, scheduler=scheduler)[0]
    result = interpreter.run(step, timing_only=True)
    bound = physical_bound(step, result.stats, result.occupancy)
    assert 0 < bound["physical_bound_cycles"] <= step.cycles and bound["gap"] >= 0
    stages = parse_layout(layout).pp if layout else 1
    assert bound["hand_off_cycles"] == (stages - 1) * (MACHINE.c2c.hop_latency_cycles + MACHINE.units["tx"].latency)
    assert bound["mxm_cycles"] > 0 or layout  # (a tiny sample's chips may hold less than a tile a plane)
    assert (bound["exchange_cycles"] > 0) == (layout is not None)  # (a stage of one chip exchanges nothing)
    assert bound["physical_bound_cycles"] == bound["mxm_cycles"] + bound["exchange_cycles"] + bound["hand_off_cycles"]
    # without the run's occupancies (the costs without SRAM ports): still a bound, and no higher
    assert physical_bound(step, result.stats)["physical_bound_cycles"] <= bound["physical_bound_cycles"]


def test_exchange_chains_count_each_exchange_on_the_way():
    """At tp=2 a layer's chips exchange twice (after attention, after the MLP): each chip's chain bound counts
    at least a hop for each of the sample's two layers' exchanges, and no program is shorter."""
    step = compile_generation(SAMPLES / "llama_decode.onnx", layout="tp=2,pp=1", scheduler="list")[0]
    result = interpreter.run(step, timing_only=True)
    chains = exchange_chains(step, [[0, 1]], result.occupancy)
    assert set(chains) == {0, 1}
    for cycles in chains.values():
        assert 2 * 2 * MACHINE.c2c.hop_latency_cycles <= cycles <= step.cycles
    assert exchange_chains(step, [[0], [1]], result.occupancy) == {}  # (stages of one chip: nothing to exchange)


@pytest.mark.parametrize("sample, before, after", [("llama_decode", 19, 13), ("gemma_prefill", 19, 13),
                                                   ("mixtral_decode", 19, 15), ("gpt2_decode", 13, 13)])
def test_matmuls_of_one_activation_fuse_into_one(sample, before, after):
    """q, k, v (and gate, up) by one weight side by side, split back: the same values (gpt2: c_attn is one)."""
    graph = load_model(SAMPLES / f"{sample}.onnx")[0]
    fused = fuse_matmuls(graph)
    count = lambda m: sum(1 for op in m.ops if op.name == "graph.matmul")  # noqa: E731
    assert (count(graph), count(fused)) == (before, after)
    with np.load(SAMPLES / f"{sample}.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    ours, theirs = evaluate(fused, inputs), evaluate(graph, inputs)
    assert all(np.allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-6) for k in theirs)


@pytest.mark.parametrize("k, n, kind", [(4096, 6144, "columns"),      # Llama-2-7B's q/k/v fused
                                        (114688, 4096, "rows"),        # Mixtral's dense down: 8 experts x 14336
                                        (32768, 28672, "columns")])    # ... and its dense gate/up
def test_a_split_matmul_moves_the_fewest_bytes(k, n, kind):
    """By columns each chip takes the whole activation and gives back its columns; by rows it takes its rows of
    the activation and gives back whole partial sums (i8 activations in two passes, i32 sums, 8 chips)."""
    from lpuc.compiler.partition import _fewest_bytes
    from lpuc.ir import Op, Value
    from lpuc.ir.types import DType, TensorType

    x = Value("x", TensorType((1, 2, k), DType.i8))
    w = Value("w", TensorType((k, n), DType.i8))
    op = Op("graph.matmul", (x, w), (Value("y", TensorType((1, 2, n), DType.i32)),))
    assert _fewest_bytes(op, {"columns": -(-n // 320), "rows": -(-k // 320)}, 8) == kind
    assert _fewest_bytes(op, {"columns": -(-n // 320)}, 8) == "columns"


@pytest.fixture(scope="module")
def tiny_prefill(tmp_path_factory):
    """Tiny Llama prefill (random weights, float32), 3 layers of hidden 352 and MLP 700 (neither a multiple of
    the 320 lanes), 7 tokens: the model file and onnxruntime's outputs on it."""
    out = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    assert shape_only.main(["tiny", "--mode", "prefill", "--seq", "7", "--layers", "3", "--weights", "random",
                            "--dtype", "float32", "-o", str(out)]) == 0
    feeds = {"input_ids": np.random.default_rng(1).integers(0, 400, (1, 7)),
             "attention_mask": np.ones((1, 7), np.int64), "position_ids": np.arange(7)[None]}
    return out, feeds, run_ort(out, feeds)


@pytest.mark.parametrize("parts, branches", [(2, 2), (4, 3), (8, 3)])  # 700 columns: 3 tiles at most
def test_paired_matmuls_compute_the_same(tiny_prefill, parts, branches):
    """Each MLP becomes `branches` branches (gate, up, SiLU and down on its own columns) and a sum; an op of
    a branch carries its group; the numbers are the model's."""
    graph = load_model(tiny_prefill[0])[0]
    paired = pair_matmuls(graph, parts, MACHINE.lanes)
    grouped = [op for op in paired.ops if "group" in op.attrs]
    assert sum(op.name == "graph.matmul" for op in grouped) == 3 * 3 * branches  # 3 layers x gate, up, down
    assert {op.attrs["group"] for op in grouped} == set(range(branches))
    assert {op.name for op in grouped} == {"graph.matmul", "graph.mul", "graph.sigmoid"}
    widths = sorted({op.result.type.shape[-1] for op in grouped if op.name == "graph.sigmoid"})
    assert sum(widths) == 700 or len(widths) < branches  # (equal widths print once)
    assert pair_matmuls(graph, 1, MACHINE.lanes) is graph
    # at a layout, branch g runs whole on chip g of its stage (its weight is that chip's part already)
    placed = partition(paired, Target(MACHINE, 8), "layout", Layout(tp=parts, pp=8 // parts)).ops
    for op in placed:
        if "group" in op.attrs:
            assert "parts" not in op.attrs and op.attrs.get("chip", 0) % parts == op.attrs["group"]
    feeds = tiny_prefill[1]
    ours, theirs = evaluate(paired, feeds), evaluate(graph, feeds)
    assert all(np.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-5) for k in theirs)


@pytest.mark.parametrize("layout", ["tp=2", "tp=4,pp=2"])
def test_a_layout_with_paired_matmuls_matches_onnxruntime(tiny_prefill, layout):
    """Compiled from the file (so the layout rewrites it: paired, fused, heads split), run on the interpreter:
    onnxruntime's numbers."""
    path, feeds, ref = tiny_prefill
    module, summary, machine_text = compile_model(path, options=CompileOptions(layout=layout, precision="fp32",
                                                                                scheduler="list"))
    result = interpreter.run(build_program(module, machine_text), feeds)
    assert max(max_rel_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles


def test_the_cache_is_scored_before_the_steps_key_is_written(five_layers):
    """Each layer's scores: the cache as it was (its transpose before the write, in program order) and the new
    key's on the VXM, the new slot chosen by position; the numbers are the model's, at every position."""
    grouped = GroupHeads().run(five_layers, Target(MACHINE, 1))
    early = score_cache_before_write(grouped)
    wheres = [op for op in early.ops if op.name == "graph.where" and ".is_new" in op.operands[0].name]
    assert len(wheres) == 5
    index = {op.result.name: i for i, op in enumerate(early.ops)}
    for op in early.ops:
        if op.name == "graph.transpose" and op.operands[0].name.startswith("past_key_values"):
            write = next(w for w in early.ops if w.name == "graph.state_write" and w.operands[0] == op.operands[0])
            assert index[op.result.name] < index[write.result.name]
    assert score_cache_before_write(early) is early  # (nothing left to rewrite)
    rng = np.random.default_rng(0)
    for pos in (0, 3, 6):
        feeds = {"input_ids": rng.integers(0, 400, (1, 1)), "position_ids": np.asarray([[pos]]),
                 "attention_mask": np.ones((1, 7), np.int64)}
        whole, ours = evaluate(grouped, feeds)["logits"], evaluate(early, feeds)["logits"]
        assert np.abs(whole).max() > 0 and max_rel_error(ours, whole) <= 1e-2  # (float16: the new dot product)


def test_a_write_landing_under_a_read_of_the_cache_as_it_was_is_a_hazard():
    """The scheduler orders a read of the cache as the step found it before the step's write lands; moved
    after it (or the write moved under it), the interpreter reports it (rule 9)."""
    step = compile_generation(SAMPLES / "llama_decode.onnx", layout="tp=2", scheduler="list")[0]
    assert not interpreter.find_hazards(step)
    ops, bases = step.module.ops, view_bases(step.module)
    states = {op.result.name for op in ops if op.name == "mem.state"}
    reads = [(op, state) for op in ops if op.name != "mem.state_write" and "cycle" in op.attrs
             for v in op.operands for state in bases.get(v.name, ()) if state in states]
    assert len({state for _, state in reads}) == 2 * 2  # each layer's keys, in 2 head groups
    read, state = reads[0]
    j = next(k for k, w in enumerate(ops) if w.name == "mem.state_write" and w.operands[0].name == state)
    moved = list(ops)
    moved[j] = Op(ops[j].name, ops[j].operands, ops[j].results, AttrDict({**ops[j].attrs, "cycle": read.attrs["cycle"]}))
    hazards = interpreter.find_hazards(dataclasses.replace(step, module=step.module.replace(ops=tuple(moved))))
    assert any(h.kind == "war" and "as the step found it" in str(h) for h in hazards)


MOE = ("mixtral_decode", "mixtral_prefill", "mixtral_decode_op23", "mixtral_prefill_op23")


@pytest.mark.parametrize("layout", ["tp=2,ep=2", "tp=4,pp=2,ep=4", "tp=8,ep=8"])  # 2, 8 and 8 chips
@pytest.mark.parametrize("sample", MOE)
def test_a_sample_at_an_expert_parallel_layout_matches_onnxruntime(sample, layout):
    """Compiled from the file (the layout's rewrites run), on the interpreter: onnxruntime's numbers."""
    module, summary, machine_text = compile_model(SAMPLES / f"{sample}.onnx", options=CompileOptions(
        layout=layout, precision="fp32", scheduler="list"))
    assert summary.partition == str(parse_layout(layout))
    with np.load(SAMPLES / f"{sample}.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(SAMPLES / f"{sample}.outputs.npz") as f:
        ref = {k: f[k] for k in f.files}
    result = interpreter.run(build_program(module, machine_text), inputs)
    assert max(max_rel_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4


@pytest.mark.parametrize("groups", [2, 4])
def test_expert_groups_each_hold_their_experts(groups):
    """ep=E: each layer's experts in E contiguous groups, group j's matmul by its experts' stacked weights alone
    (their rows of the whole stack), on chip j of its stage; the numbers are the dense form's."""
    graph = load_model(SAMPLES / "mixtral_decode.onnx")[0]
    whole, grouped = dense_experts(graph), dense_experts(graph, groups=groups)
    stacks = [op for op in whole.ops if op.name == "graph.constant" and ".stacked" in op.result.name]
    parts = [op for op in grouped.ops if op.name == "graph.constant" and ".stacked" in op.result.name]
    assert len(parts) == groups * len(stacks)
    assert sum(op.result.type.numel for op in parts) == sum(op.result.type.numel for op in stacks)
    matmuls = [op for op in grouped.ops if op.name == "graph.matmul" and ".stacked" in op.operands[1].name]
    assert sorted({op.attrs["group"] for op in matmuls}) == list(range(groups))
    layout = Layout(tp=4, pp=1, ep=groups)
    placed = partition(grouped, Target(MACHINE, 4), "layout", layout).ops
    for op in placed:
        if op.name == "graph.matmul" and ".stacked" in op.operands[1].name:
            assert op.attrs.get("chip", 0) == op.attrs["group"] and "parts" not in op.attrs
    with np.load(SAMPLES / "mixtral_decode.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    ours, theirs = evaluate(grouped, inputs), evaluate(whole, inputs)
    assert all(np.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6) for k in theirs)


def test_a_layouts_text_reads_back():
    for text in ("tp=8,pp=72", "tp=8,pp=72,ep=8", "tp=2,pp=1,ep=2", "tp=72,pp=8,kv=4"):
        assert str(parse_layout(text)) == text
    assert parse_layout("tp=4,ep=2") == Layout(tp=4, pp=1, ep=2)
    assert parse_layout("tp=4,kv=1") == Layout(tp=4, pp=1, kv=1) and Layout(tp=4).kv is None


def test_a_state_read_on_another_chip_comes_over_from_its_own():
    """A read of the cache as the step found it placed on another chip than the cache (a stage's cut between
    them) gets the state's words by a transfer from its chip: one state, not a second declared there."""
    graph = score_cache_before_write(GroupHeads().run(make_stateful(load_model(SAMPLES / "llama_decode.onnx")[0]),
                                                      Target(MACHINE, 1)))
    states = {op.result.name for op in graph.ops if op.name == "graph.state"}
    ops = []
    for op in graph.ops:
        elsewhere = any(v.name in states for v in op.operands) and op.name != "graph.state_write"
        ops.append(Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "chip": 1})) if elsewhere else op)
    assert sum(1 for op in ops if op.attrs.get("chip") == 1) == 2  # each layer's keys, read early
    placed = graph.replace(ops=tuple(ops), attrs=AttrDict({**graph.attrs, "chips": 2}))
    module, _ = compile_module(placed, MACHINE, CompileOptions(scheduler="list"))
    declared = [op for op in module.ops if op.name == "mem.state"]
    assert len(declared) == len(states) and all(op.attrs.get("chip", 0) == 0 for op in declared)
    sent = {op.operands[0].name for op in module.ops if op.name == "c2c.send"}
    assert sum(1 for op in declared if op.result.name in sent) == 2
    feeds = {"input_ids": np.asarray([[3]]), "position_ids": np.asarray([[0]]),
             "attention_mask": np.ones((1, 24), np.int64)}
    feeds["attention_mask"][0, 1:] = 0
    result = interpreter.run(build_program(module, MACHINE_TEXT), feeds)
    assert max_rel_error(result.outputs["logits"], evaluate(graph, feeds)["logits"]) <= 1e-2


@pytest.mark.parametrize("sample, layout", [("llama_decode", "tp=2,pp=4"), ("gpt2_decode", "tp=2,pp=3")])
def test_what_is_made_of_a_cache_as_it_was_stays_on_the_caches_stage(sample, layout):
    """More stages than layers put cuts inside layers; none falls between a cache and its keys' early
    transpose (the whole cache would cross a link every step), and generation gives Hugging Face's tokens."""
    step, first = compile_generation(SAMPLES / f"{sample}.onnx", SAMPLES / f"{sample.replace('_decode', '_prefill')}.onnx",
                                     layout=layout, scheduler="list")
    bases = view_bases(step.module)
    states = {op.result.name for op in step.module.ops if op.name == "mem.state"}
    assert not [op for op in step.module.ops if op.name == "c2c.send"
                and states & set(bases.get(op.operands[0].name, (op.operands[0].name,)))]
    with np.load(SAMPLES / f"{sample}.generate.npz") as f:
        prompt, tokens = f["prompt"], f["tokens"]
    assert generate(step, prompt, tokens.shape[1], first).tokens.tolist() == tokens.tolist()


def test_stage_cuts_keep_a_layers_branches_together(tiny_prefill):
    """With more stages than layers, cuts fall inside layers, but not between one MLP's branches (one stage's
    chips would do some of them on top of their own layer's share)."""
    graph = pair_matmuls(load_model(tiny_prefill[0])[0], 2, MACHINE.lanes)
    placed = partition(graph, Target(MACHINE, 8), "layout", Layout(tp=2, pp=4)).ops
    branches: dict[str, set[int]] = {}
    for op in placed:
        if op.name == "graph.matmul" and "group" in op.attrs:  # gate_17.part0 ... : its region by its exit
            region = op.result.name.split(".part")[0]
            branches.setdefault(region, set()).add(op.attrs.get("chip", 0) // 2)
    assert len(branches) == 3 * 3 and all(len(stages) == 1 for stages in branches.values())
    stages = {op.attrs.get("chip", 0) // 2 for op in placed if op.name != "graph.constant"}
    assert len(stages) == 4


@pytest.mark.parametrize("layout", ["tp=2", "tp=4,pp=2"])
def test_a_decode_step_with_its_cache_resident_at_a_layout_computes_the_models_numbers(tmp_path, layout):
    """Tiny Llama decode, widths beyond one vector and not multiples of it, its cache resident, compiled from the
    file at a layout (paired MLPs, head groups computing their own q/k/v, scores over the cache as it was,
    the output projection by rows): the interpreter gives the reference evaluator's numbers on the model."""
    out = tmp_path / "decode.onnx"
    assert shape_only.main(["tiny", "--mode", "decode", "--past", "6", "--layers", "3", "--weights", "random",
                            "--dtype", "float32", "-o", str(out)]) == 0
    module, _, machine_text = compile_model(out, options=CompileOptions(layout=layout, precision="fp32",
                                                                         scheduler="list", state="auto"))
    names = {op.result.name for op in module.ops if op.name == "mem.state"}
    assert names and all(".heads" in n for n in names)
    feeds = {"input_ids": np.asarray([[17]]), "position_ids": np.asarray([[0]]),
             "attention_mask": np.asarray([[1, 0, 0, 0, 0, 0, 0]])}
    ours = interpreter.run(build_program(module, machine_text), feeds).outputs["logits"]
    reference = evaluate(make_stateful(load_model(out)[0]), feeds)["logits"]
    assert np.abs(reference).max() > 0 and max_rel_error(ours, reference) <= 1e-4


def test_expert_groups_also_when_a_stacked_table_is_larger_than_a_chip(monkeypatch):
    """A table larger than a chip is made dense before a layout is chosen; at ep=E the layout still groups its
    experts (it rewrites the model as imported), and the numbers are onnxruntime's. (Every table counts as
    larger than a chip here: the sample's are small.)"""
    import lpuc.compiler.pipeline as pipeline

    def every_table(module, larger_than=None, groups=1):
        return dense_experts(module, None if larger_than is None else 0, groups)

    monkeypatch.setattr(pipeline, "dense_experts", every_table)
    module, summary, machine_text = compile_model(SAMPLES / "mixtral_decode.onnx", options=CompileOptions(
        layout="tp=4,ep=4", precision="fp32", scheduler="list"))
    groups = {op.attrs.get("chip", 0) for op in module.ops if op.name == "mem.constant"
              and ".stacked.experts" in op.result.name}
    assert groups == set(range(4))  # 4 experts: 4 groups, one per chip
    with np.load(SAMPLES / "mixtral_decode.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(SAMPLES / "mixtral_decode.outputs.npz") as f:
        ref = {k: f[k] for k in f.files}
    result = interpreter.run(build_program(module, machine_text), inputs)
    assert max(max_rel_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4


def _mlp_over_two_nodes(path, layers: int = 1):
    """`layers` times: x [1, 5, 352] -> Sigmoid (on the stage's first chip) -> MatMul [352, 5000] -> Relu ->
    MatMul [5000, 352] -> + x: an MLP of 16 column tiles (5,000 is no multiple of the 320 lanes), so at tp=16
    its branches fill chips 0-15: two nodes."""
    from onnx import TensorProto, helper, numpy_helper

    from helpers import save, tiny_model

    rng = np.random.default_rng(7)
    nodes, weights, x = [], [], "x"
    for i in range(layers):
        for shape, scale, name in (((352, 5000), 19, f"w{i}a"), ((5000, 352), 55, f"w{i}b")):
            weights.append(numpy_helper.from_array((rng.standard_normal(shape) / scale).astype(np.float32), name))
        out = "out" if i == layers - 1 else f"x{i + 1}"
        nodes += [helper.make_node("Sigmoid", [x], [f"s{i}"]),
                  helper.make_node("MatMul", [f"s{i}", f"w{i}a"], [f"h{i}"]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w{i}b"], [f"y{i}"]),
                  helper.make_node("Add", [f"y{i}", x], [out])]
        x = out
    model = tiny_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 352])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5, 352])], weights)
    return save(model, path)


@pytest.mark.parametrize("layers, crossings", [(1, [(1, 0)]), (3, [(0, 1), (0, 1), (1, 0), (1, 0), (1, 0)])])
def test_a_stage_over_two_nodes_keeps_its_residual_on_each(tmp_path, layers, crossings):
    """At tp=16 (two nodes of 8, one cable between them) each node's first chip computes the unsplit ops its
    chips read (the Sigmoid, from the model's input; the sum of the partial products; the residual) for itself:
    each node's partial sums are added on its own first chip, and the node sums cross once each way (an
    all-reduce between the two), except after the last layer, whose sum is needed where the output is. The
    numbers are onnxruntime's."""
    from lpuc.ir.topology import spanned_nodes

    assert spanned_nodes(MACHINE, 16) == 8 and spanned_nodes(MACHINE, 8) == 0 and spanned_nodes(MACHINE, 12) == 0
    path = _mlp_over_two_nodes(tmp_path / "mlp.onnx", layers)
    module, summary, machine_text = compile_model(path, options=CompileOptions(layout="tp=16", precision="fp32",
                                                                                scheduler="list"))
    network = Target(MACHINE, 16).network
    crossed = []
    for op in module.ops:
        if op.name == "c2c.send":
            src = op.attrs.get("chip", 0)
            dst = network.destination(src, op.attrs["route"])[0]
            if src // 8 != dst // 8:
                crossed.append((src // 8, dst // 8))
    assert sorted(crossed) == crossings
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 5, 352)).astype(np.float32)}
    result = interpreter.run(build_program(module, machine_text), feeds)
    assert max_rel_error(result.outputs["out"], run_ort(path, feeds)["out"]) <= 1e-4


def test_the_default_layout_widens_its_stages_while_they_fit(tmp_path, monkeypatch):
    """Beyond what the weights need, chips widen the stages (whole nodes of a rack, no wider than the widest
    weight's column tiles), the widest that fits first; a layout that does not fit gives way to the next."""
    import lpuc.compiler.partition as partition_module
    from lpuc.compiler.allocate import DoesNotFit
    from lpuc.compiler.pipeline import node_layouts

    graph = load_model(_mlp_over_two_nodes(tmp_path / "mlp.onnx", layers=3))[0]
    assert node_layouts(graph, MACHINE, 16) == ("tp=16,pp=1", "tp=8,pp=2")
    assert node_layouts(graph, MACHINE, 24) == ("tp=8,pp=3",)  # 24 chips a stage: more than 16 tiles
    assert node_layouts(graph, MACHINE, 8) == ()                # one node: the partition strategies
    options = CompileOptions(scheduler="list", chips=16, precision="fp32")
    assert compile_module(graph, MACHINE, options)[1].partition == "tp=16,pp=1"
    staged = partition_module._staged

    def sixteen_too_many(module, target, constants, layout):
        if layout.tp == 16:
            raise DoesNotFit(f"layout {layout} does not fit (as if)")
        return staged(module, target, constants, layout)

    monkeypatch.setattr(partition_module, "_staged", sixteen_too_many)
    assert compile_module(graph, MACHINE, options)[1].partition == "tp=8,pp=2"


def test_a_default_layout_too_full_with_kv_copies_tries_fewer_before_a_narrower_one(five_layers, monkeypatch):
    """Sixteen chips: the default tp=8,pp=2 keeps the tiny model's 2 KV heads in 2 copies; as if that did not
    fit, tp=8,pp=2 with one copy (kv=1) comes next, before the partition strategies."""
    import lpuc.compiler.partition as partition_module
    from lpuc.compiler.allocate import DoesNotFit
    from lpuc.compiler.pipeline import node_layouts

    assert node_layouts(five_layers, MACHINE, 16) == ("tp=8,pp=2",)  # (its widest weight: 8 column tiles)
    staged, tried = partition_module._staged, []

    def copies_too_many(module, target, constants, layout):
        tried.append(str(layout))
        if layout.kv is None:
            raise DoesNotFit(f"layout {layout} does not fit (as if)")
        return staged(module, target, constants, layout)

    monkeypatch.setattr(partition_module, "_staged", copies_too_many)
    summary = compile_module(five_layers, MACHINE, CompileOptions(scheduler="list", chips=16, precision="fp32"))[1]
    assert tried == ["tp=8,pp=2", "tp=8,pp=2,kv=1"] and summary.partition == "tp=8,pp=2,kv=1"


@pytest.mark.parametrize("sample", MOE)
@pytest.mark.parametrize("parts", [2, 4, 8])
def test_an_expert_mlp_becomes_an_mlp_per_expert_on_its_share_of_the_stage(sample, parts):
    """At a layout (no ep), each expert MLP (gathered gate-and-up, SwiGLU, gathered down by the same choices)
    becomes an ordinary MLP per expert on its rows masked by the choice, paired over its share of the stage's
    chips (4 experts: e * parts // 4 on); the numbers are the gathered form's."""
    graph = load_model(SAMPLES / f"{sample}.onnx")[0]
    chained, spans = expert_chains(graph, parts)
    assert not any(op.name == "graph.gather_nd" and op.operands[0].type.rank == 3 for op in chained.ops)
    assert sorted((r.start, r.stop) for r in spans.values()) == sorted(
        (e * parts // 4, max(e * parts // 4 + 1, (e + 1) * parts // 4)) for e in range(4) for _layer in range(2))
    paired = pair_matmuls(chained, parts, MACHINE.lanes, 0, spans)
    producer = {r.name: op for op in paired.ops for r in op.results}
    for name, span in spans.items():
        assert producer[name].attrs["group"] in span  # (one column tile: one branch, the expert's first chip)
    with np.load(SAMPLES / f"{sample}.inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    ours, theirs = evaluate(paired, inputs), evaluate(graph, inputs)
    assert all(np.allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-6) for k in theirs)
    assert expert_chains(load_model(SAMPLES / "llama_decode.onnx")[0], parts)[1] == {}


@pytest.mark.parametrize("layout", ["tp=8", "tp=4,pp=2"])
def test_experts_wider_than_a_vector_split_over_their_share_and_match_onnxruntime(tmp_path, layout):
    """Mixtral of hidden 352 and experts of 330 columns (two tiles, neither a multiple of 320), 4 experts,
    5 tokens, random weights: at tp=8 each expert's gate, up and down split over its own 2 chips, every chip
    holding one expert's part; the program's numbers are onnxruntime's."""
    path = tmp_path / "moe.onnx"
    assert shape_only.main(["tiny-moe", "--mode", "prefill", "--seq", "5", "--weights", "random", "--dtype",
                            "float32", "-o", str(path)]) == 0
    feeds = {"input_ids": np.random.default_rng(4).integers(0, 400, (1, 5)),
             "attention_mask": np.ones((1, 5), np.int64), "position_ids": np.arange(5)[None]}
    module, summary, machine_text = compile_model(path, options=CompileOptions(layout=layout, precision="fp32",
                                                                                scheduler="list"))
    tp = parse_layout(layout).tp
    expert_weights = {}  # chip of the stage -> the experts whose weights it holds
    for op in module.ops:
        key = op.attrs["value"].key if op.name == "mem.constant" else ""
        if "#expert" in key:
            expert = int(key.split("#expert")[1].split(".")[0])
            expert_weights.setdefault(op.attrs.get("chip", 0) % tp, set()).add(expert)
    assert expert_weights and all(len(experts) == 1 for experts in expert_weights.values()), expert_weights
    if tp == 8:
        assert sorted(expert_weights) == list(range(8))
    result = interpreter.run(build_program(module, machine_text), feeds)
    ref = run_ort(path, feeds)
    assert max(max_rel_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4


def test_the_chips_holding_head_groups_take_the_fewest_mlp_tiles(five_layers):
    """Attention runs before the MLP, so the chips of its head groups take the fewest of the MLP's tiles, no
    chip more than the even split's most: Llama-2-70B (8 KV heads, 90 tiles) at tp=24 gives them 3 or 4
    (the others 4), at tp=72 none; the tiny model (2 KV heads, 3 tiles) at tp=4, its KV heads in two copies
    (compiler/replicated_kv.py) and so a head group on every chip: chips 1-3."""
    from lpuc.compiler.paired_matmuls import _share
    from lpuc.compiler.pipeline import _laid_out

    groups, sizes = _share(90, range(24), set(range(8)))
    assert sum(sizes) == 90 and max(sizes) == 4 and groups == list(range(24))
    assert all(sizes[g] == 4 for g in range(8, 24)) and sorted(sizes[:8]) == [3] * 6 + [4] * 2
    groups, sizes = _share(90, range(72), set(range(8)))
    assert groups == list(range(8, 72)) and sum(sizes) == 90 and max(sizes) == 2
    assert _share(90, range(24), set()) == (list(range(24)), [(g + 1) * 90 // 24 - g * 90 // 24 for g in range(24)])
    laid = _laid_out(five_layers, five_layers, MACHINE, CompileOptions(precision="fp32"), "tp=4,pp=1", None)
    heads = {op.attrs["group"] for op in laid.ops if op.name == "graph.matmul" and ".heads" in op.result.name}
    mlp = {op.attrs["group"] for op in laid.ops if op.name == "graph.matmul" and ".mlp." in op.operands[1].name}
    assert heads == {0, 1, 2, 3} and mlp == {1, 2, 3}
    feeds = {"input_ids": np.asarray([[7]]), "position_ids": np.asarray([[3]]), "attention_mask": np.ones((1, 7), np.int64)}
    ours, theirs = evaluate(laid, feeds)["logits"], evaluate(five_layers, feeds)["logits"]
    assert np.abs(theirs).max() > 0 and np.allclose(ours, theirs, rtol=1e-2, atol=1e-2)


def test_partial_sums_of_a_share_are_added_node_by_node_on_their_own_chips():
    """add_up with the groups of its partials (an expert's share, chips 9-17 of a stage of 72, nodes of 8):
    node 1's seven (chips 9-15) are summed on chip 9, node 2's two on chip 16, then the two node sums meet where
    the result is."""
    from lpuc.compiler.passes import add_up
    from lpuc.ir import Value
    from lpuc.ir.types import DType, TensorType

    t = TensorType((1, 4), DType.f32)
    partials = [Value(f"p{g}", t) for g in range(9, 18)]
    names = iter(f"s{k}" for k in range(100))
    ops = add_up(partials, Value("y", t), lambda hint: next(names), 9, node=8, groups=list(range(9, 18)))
    on = [(op.attrs.get("group"), [v.name for v in op.operands]) for op in ops]
    assert on[:6] == [(9, ["p9", "p10"])] + [(9, [f"s{k}", f"p{k + 11}"]) for k in range(5)]
    assert on[6:] == [(16, ["p16", "p17"]), (None, ["s5", "s6"])] and ops[-1].result.name == "y"


def test_partial_sums_all_on_one_node_past_the_first_are_its_sum():
    """add_up with every partial on node 1 (chips 9-11 of a stage of 16): the node's sum, on its first chip
    of them, is the result (there is no sum across nodes to make it)."""
    from lpuc.compiler.passes import add_up
    from lpuc.ir import Value
    from lpuc.ir.types import DType, TensorType

    t = TensorType((1, 4), DType.f32)
    partials = [Value(f"p{g}", t) for g in range(9, 12)]
    names = iter(f"s{k}" for k in range(100))
    ops = add_up(partials, Value("y", t), lambda hint: next(names), 3, node=8, groups=[9, 10, 11])
    assert [(op.attrs.get("group"), [v.name for v in op.operands], op.result.name) for op in ops] == [
        (9, ["p9", "p10"], "s0"), (9, ["s0", "p11"], "y")]


def test_a_stage_over_two_nodes_keeps_the_residual_stream_on_each_nodes_first_chip(five_layers, monkeypatch):
    """At tp=16 each layer's unsplit ops (residual adds, norms, the sum of the node sums) are computed on
    node 1's first chip too (group 8) wherever node 1's chips read them, each copy reading copies, never the
    cache; the last layer's output, read by the head alone, is not copied. The copies are the same numbers:
    the evaluator's logits are exactly those without them."""
    import lpuc.compiler.pipeline as pipeline_module
    from lpuc.compiler.node_residual import residual_on_every_node

    options = CompileOptions(precision="fp32")
    laid = pipeline_module._laid_out(five_layers, five_layers, MACHINE, options, "tp=16,pp=1", None)
    monkeypatch.setattr(pipeline_module, "residual_on_every_node", lambda module, *args: module)
    alone = pipeline_module._laid_out(five_layers, five_layers, MACHINE, options, "tp=16,pp=1", None)
    copies = [op for op in laid.ops if op.attrs.get("group") == 8 and op.result.name.endswith(".node1")]
    produced = {r.name: op for op in laid.ops for r in op.results}
    norms = sorted(op.result.name for op in copies if op.name == "graph.reduce_mean")
    # each layer's norm before its MLP, whose branches fall on node 1; not the norm before attention (the
    # tiny model's heads all run on node 0) nor the final norm (the head splits on its own)
    assert len(norms) == 5 and not any(OPS[produced[v.name].name].persistent
                                       for op in copies for v in op.operands if v.name in produced)
    # a copy reads copies of what has them (the residual stream), the partial sums straight from their chips
    assert all(v.name + ".node1" not in produced for op in copies for v in op.operands)
    assert residual_on_every_node(alone, 8, 0, MACHINE.lanes) is alone  # (a stage of one node: nothing)
    feeds = {"input_ids": np.asarray([[7]]), "position_ids": np.asarray([[3]]), "attention_mask": np.ones((1, 7), np.int64)}
    ours, theirs = evaluate(laid, feeds)["logits"], evaluate(alone, feeds)["logits"]
    assert np.abs(theirs).max() > 0 and np.array_equal(ours, theirs)


def test_a_sum_of_sums_over_nodes_is_added_node_by_node_first():
    """Two experts' partial products, each summed node by node (passes.add_up: chips 9 and 16, 10 and 17 of a
    stage of 24, nodes of 8), then added: regrouped, each node's terms are added on its first chip, and one
    sum a node crosses; the result is the same sum."""
    from lpuc.compiler.node_residual import _sums_by_node
    from lpuc.compiler.passes import add_up
    from lpuc.ir import Module, Value
    from lpuc.ir.core import Block
    from lpuc.ir.types import DType, TensorType

    t = TensorType((1, 4), DType.f32)
    x = Value("x", t)
    ops, names = [], iter(f"s{k}" for k in range(100))
    experts = []
    for name, chips in (("a", (9, 16)), ("b", (10, 17))):
        parts = [Value(f"{name}{c}", t) for c in chips]
        ops += [Op("graph.relu", (x,), (p,), AttrDict({"group": c})) for p, c in zip(parts, chips)]
        experts.append(Value(name, t))
        ops += add_up(parts, experts[-1], lambda hint: next(names), 24, node=8, groups=list(chips))
    ops.append(Op("graph.add", tuple(experts), (Value("y", t),)))
    module = Module("m", Block((x,), tuple(ops), (("y", ops[-1].result),)))
    regrouped = _sums_by_node(module, 24, 8)
    adds = [(op.attrs.get("group"), [v.name for v in op.operands], op.result.name)
            for op in regrouped.ops if op.name == "graph.add"]
    assert adds == [(8, ["a9", "b10"], "y.node1"), (16, ["a16", "b17"], "y.node2"), (None, ["y.node1", "y.node2"], "y")]
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(1, 4) - 1.5}
    assert np.array_equal(evaluate(regrouped, feeds)["y"], evaluate(module, feeds)["y"])

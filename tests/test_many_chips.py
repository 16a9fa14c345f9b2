"""Many chips, end to end: every sample partitioned over 2, 4 and 8 chips (pipeline and tensor),
lowered with explicit transfers, scheduled and run on the interpreter, which checks every link, must
match onnxruntime (the stored outputs) within 1e-4; and the partition, topology and chip-count rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lpuc.backends import interpreter
from lpuc.backends.lpu import build_program
from lpuc.compiler.driver import compile_model, load_model, max_relative_error
from lpuc.compiler.partition import describe, parse_layout, partition
from lpuc.compiler.pipeline import CompileOptions, compile_module, default_chips
from lpuc.ir import LpucError
from lpuc.ir import machine_ops as mo
from lpuc.ir.machine import read_machine
from lpuc.ir.target import Target
from lpuc.ir.topology import network, round_chips, supported_chips

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MODELS = sorted(p.stem for p in SAMPLES.glob("*.onnx"))
MACHINE, MACHINE_TEXT = read_machine("tsp-v1")


def _npz(name: str, kind: str) -> dict:
    with np.load(SAMPLES / f"{name}.{kind}.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def graphs():
    return {}


def _graph(graphs, name):
    if name not in graphs:
        graphs[name] = load_model(SAMPLES / f"{name}.onnx")[0]
    return graphs[name]


@pytest.mark.parametrize("strategy", ["pipeline", "tensor"])
@pytest.mark.parametrize("chips", [2, 4, 8])
@pytest.mark.parametrize("name", MODELS)
def test_sample_on_many_chips_matches_onnxruntime(graphs, name, chips, strategy):
    module, summary = compile_module(_graph(graphs, name), MACHINE,
                                     CompileOptions(scheduler="list", chips=chips, partition=strategy,
                                                    precision="fp32"))
    assert summary.chips == chips and summary.partition == strategy and module.attrs["chips"] == chips
    used = {mo.chip_of(op) for op in module.ops if mo.unit_class(op.name)}
    sends = [op for op in module.ops if op.name == "c2c.send"]
    assert len(used) > 1 and sends and summary.transfers == len(sends)
    result = interpreter.run(build_program(module, MACHINE_TEXT), _npz(name, "inputs"))
    ref = _npz(name, "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles


@pytest.mark.parametrize("layout", ["tp=2", "tp=2,pp=2", "tp=4,pp=2"])
@pytest.mark.parametrize("name", MODELS)
def test_sample_at_a_layout_matches_onnxruntime(graphs, name, layout):
    # from the file, as `lpuc compile --layout` does: the layout's rewrites (paired matmuls, head groups and
    # the scores they pull back, dense experts) run on the model as imported
    module, summary, _ = compile_model(SAMPLES / f"{name}.onnx", options=CompileOptions(
        scheduler="list", layout=layout, precision="fp32"))
    tp, pp = (int(word[3:]) for word in (layout + ",pp=1").split(",")[:2])
    assert summary.chips == module.attrs["chips"] == tp * pp and summary.partition == f"tp={tp},pp={pp}"
    # every op runs on its stage's first chip, a split op's parts inside its stage; every stage runs ops
    placed = partition(_graph(graphs, name), Target(MACHINE, tp * pp), "layout", parse_layout(layout)).ops
    homes = {op.attrs.get("chip", 0) for op in placed if op.name != "graph.constant"}
    assert homes == set(range(0, tp * pp, tp))
    assert all(c // tp == op.attrs.get("chip", 0) // tp for op in placed for c in op.attrs.get("parts", ()))
    assert any("parts" in op.attrs for op in placed) == (tp > 1)
    result = interpreter.run(build_program(module, MACHINE_TEXT), _npz(name, "inputs"))
    ref = _npz(name, "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles


def test_pipeline_is_contiguous_and_balanced(graphs):
    graph = _graph(graphs, "llama_prefill")
    part = partition(graph, Target(MACHINE, 4), "pipeline")
    homes = [op.attrs.get("chip", 0) for op in part.ops if op.name != "graph.constant"]
    assert homes == sorted(homes) and set(homes) == {0, 1, 2, 3}
    lines = describe(part, MACHINE.lanes)
    assert len(lines) == 4 and all(line.startswith(f"chip {c}:") for c, line in enumerate(lines))


def test_split_weights_live_only_on_their_chips(graphs):
    """A tensor split puts each chip's cut of the weight in that chip's image, not the whole weight on one."""
    graph = _graph(graphs, "gpt2_prefill")
    module, _ = compile_module(graph, MACHINE, CompileOptions(scheduler="list", chips=2, partition="tensor"))
    per_chip = {}
    for op in module.ops:
        if op.name == "mem.constant":
            per_chip[mo.chip_of(op)] = per_chip.get(mo.chip_of(op), 0) + op.result.type.numel
    whole = sum(op.result.type.numel for op in graph.ops if op.name == "graph.constant")
    assert per_chip.get(1, 0) > 0 and sum(per_chip.values()) < 1.2 * whole


def test_one_network_per_compile(graphs):
    """The network of a chip count is built once: the compile's Target shares it with every stage, and the
    .lpu and its statistics rebuild the same Target from the module's chip count."""
    network.cache_clear()
    module, _ = compile_module(_graph(graphs, "gpt2_decode"), MACHINE, CompileOptions(scheduler="list", chips=4))
    program = build_program(module, MACHINE_TEXT)
    interpreter.schedule_stats(program.module, program.target)
    assert program.target == Target(MACHINE, 4) and network.cache_info().misses == 1


def test_transfers_take_the_topology_route():
    net = network(MACHINE, 16)  # two dragonfly nodes: chip 1 -> chip 10 is local, global, local
    route = net.route(1, 10)
    assert len(route) <= 3 and net.destination(1, route)[0] == 10
    assert net.hops(1, route)[0] == (1, route[0])
    for c, p in net.links():
        assert net.peer(*net.peer(c, p)) == (c, p)


def test_racks_join_beyond_33_nodes():
    """576 chips are 8 racks of 9 nodes: 2 cables between every two nodes of a rack, one between every two
    racks; every port cable answers back, and a route crosses at most 7 links (local, rack, local, between
    racks, local, rack, local)."""
    net = network(MACHINE, 576)
    for c, p in net.links():
        assert net.peer(*net.peer(c, p)) == (c, p)
    node = lambda chip: chip // 8
    between = lambda a, b: sum(1 for (c, p), (d, _) in net.cables.items() if node(c) == a and node(d) == b)
    assert between(0, 1) == between(0, 8) == 2  # nodes of rack 0
    racks = {(node(c) // 9, node(d) // 9) for (c, p), (d, _) in net.cables.items() if node(c) // 9 != node(d) // 9}
    assert len(racks) == 8 * 7  # every ordered pair of racks, by exactly one cable each way
    assert sum(1 for (c, p), (d, _) in net.cables.items() if node(c) // 9 == 0 and node(d) // 9 == 1) == 1
    assert max(len(net.route(a, b)) for a in (0, 37) for b in range(576)) == 7


@pytest.mark.parametrize("kind,extra,sizes,bad", [
    ("dragonfly", {}, [1, 2, 5, 8, 16, 64, 264, 288], [9, 12, 272, 300]),
    ("ring", {}, [1, 2, 3, 7], []),
    ("torus2d", {"width": 4}, [1, 4, 8, 12], [2, 6]),
])
def test_topologies(kind, extra, sizes, bad):
    machine = dataclasses.replace(MACHINE, topology=dataclasses.replace(MACHINE.topology, kind=kind, **extra))
    for n in sizes:
        net = network(machine, n)
        assert all(len(net.route(0, b)) >= (b != 0) for b in range(n))
    for n in bad:
        assert not supported_chips(machine, n)
        with pytest.raises(LpucError, match="cannot have"):
            network(machine, n)
        assert supported_chips(machine, round_chips(machine, n))


def test_a_ring_machine_file_compiles_and_runs(tmp_path, graphs):
    text = MACHINE_TEXT.replace('kind = "dragonfly"', 'kind = "ring"')
    path = tmp_path / "ring.toml"
    path.write_text(text.replace('name = "tsp-v1"', 'name = "ring-v1"'))
    machine, machine_text = read_machine(path)
    graph = _graph(graphs, "llama_decode")
    module, summary = compile_module(graph, machine,
                                     CompileOptions(scheduler="list", chips=4, partition="pipeline",
                                                    precision="fp32"))
    routes = [op.attrs["route"] for op in module.ops if op.name == "c2c.send"]
    assert routes and all(len(r) >= 1 for r in routes)
    result = interpreter.run(build_program(module, machine_text), _npz("llama_decode", "inputs"))
    ref = _npz("llama_decode", "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4


def test_default_chip_count_is_one_for_the_samples(graphs):
    assert default_chips(_graph(graphs, "mixtral_prefill"), MACHINE) == 1


def test_auto_picks_the_faster_partition(graphs):
    _, summary = compile_module(_graph(graphs, "llama_decode"), MACHINE,
                                CompileOptions(scheduler="list", chips=2))
    tried = dict(summary.candidates)
    assert set(tried) == {"pipeline", "tensor"}
    assert summary.partition == min(tried, key=lambda s: (int(tried[s]), s))


def test_many_chip_schedules_are_deterministic_across_processes(tmp_path):
    """`lpuc compile --chips 4` (auto partition) under two hash seeds: the same bytes as in this process."""
    import os
    import subprocess
    import sys

    from lpuc.backends.lpu import lpu_bytes
    from lpuc.compiler.driver import lpu_options

    from helpers import ROOT

    model = SAMPLES / "llama_decode.onnx"
    options = CompileOptions(chips=4)  # the default scheduler: CP-SAT
    module, summary = compile_module(load_model(model)[0], MACHINE, options)
    here = lpu_bytes(module, MACHINE_TEXT, lpu_options(options), summary.facts())
    for seed in ("0", "12345"):
        out = tmp_path / f"{seed}.lpu"
        subprocess.run([sys.executable, "-m", "lpuc.compiler", "compile", str(model), "-o", str(out), "--chips", "4",
                        "--json"], cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, check=True,
                       capture_output=True)
        assert out.read_bytes() == here, f"PYTHONHASHSEED={seed} gives other bytes"


def test_perfetto_trace_draws_every_transfer(graphs):
    from lpuc.backends.trace import chrome_trace

    module, _ = compile_module(_graph(graphs, "gpt2_prefill"), MACHINE,
                               CompileOptions(scheduler="list", chips=2, partition="pipeline"))
    trace = chrome_trace(build_program(module, MACHINE_TEXT))
    sends = [op for op in module.ops if op.name == "c2c.send"]
    links = [e for e in trace["traceEvents"] if e.get("cat") == "link"]
    flows = [e for e in trace["traceEvents"] if e.get("cat") == "transfer"]
    assert len(links) == 2 * len(sends) and len(flows) == 2 * len(sends)
    assert {e["pid"] for e in links} == {1, 2}


BY_HAND = """\
# A partition written by hand: the up projection by columns (3 tiles: chip 1 takes the first, chip 0 the
# other two), the down projection on chip 1 by rows (chip 0 two tiles, chip 1 one), attention by heads.
module @by_hand attributes {{chips = 2}} {{
  input %x : f32[3,640]
  input %q : f32[4,5,8]
  input %k : f32[4,8,5]
  %w_up = graph.constant {{value = tensor<f32[640,700], "{w_up}">}} : f32[640,700]
  %up = graph.matmul %x, %w_up {{split = "columns", parts = [1, 0]}} : f32[3,700]
  %act = graph.relu %up {{chip = 1}} : f32[3,700]
  %w_down = graph.constant {{value = tensor<f32[700,96], "{w_down}">}} : f32[700,96]
  %down = graph.matmul %act, %w_down {{chip = 1, split = "rows", parts = [0, 1], shares = [2, 1]}} : f32[3,96]
  %scores = graph.matmul %q, %k {{chip = 1, split = "heads", parts = [0, 1]}} : f32[4,5,5]
  %probs = graph.softmax %scores : f32[4,5,5]
  output "down" = %down
  output "probs" = %probs
}}
"""


def write_by_hand(tmp_path) -> tuple[Path, np.random.Generator]:
    """BY_HAND with its weights (in its blobs file) in tmp_path: (the IR file, the generator, for inputs)."""
    from lpuc.ir.attributes import Tensor
    from lpuc.ir.files import blob_path, write_npz

    rng = np.random.default_rng(0)
    weights = {"w_up": rng.standard_normal((640, 700)).astype(np.float32) / 25,
               "w_down": rng.standard_normal((700, 96)).astype(np.float32) / 25}
    keys = {name: Tensor.from_array(w).key for name, w in weights.items()}
    path = tmp_path / "by_hand.ir"
    path.write_text(BY_HAND.format(**keys))
    write_npz(blob_path(path), {keys[name]: w for name, w in weights.items()})
    return path, rng


def test_a_partition_written_by_hand_compiles_and_runs(tmp_path):
    """An IR file whose partition is written by hand compiles as written on 2 chips (each weight cut as its
    split says) and runs as the reference evaluator does."""
    from lpuc.compiler.driver import compile_model
    from lpuc.ir.evaluator import evaluate

    path, rng = write_by_hand(tmp_path)
    module, summary, machine_text = compile_model(path, options=CompileOptions(scheduler="list", precision="fp32"))
    assert (summary.chips, summary.partition, module.attrs["chips"]) == (2, "given", 2)
    cuts = {(mo.chip_of(op), op.result.type.shape) for op in module.ops
            if op.name == "mem.constant" and op.result.type.rank == 2}
    assert {(1, (640, 320)), (0, (640, 380)), (0, (640, 96)), (1, (60, 96))} <= cuts
    inputs = {name: rng.standard_normal(shape).astype(np.float32)
              for name, shape in (("x", (3, 640)), ("q", (4, 5, 8)), ("k", (4, 8, 5)))}
    result = interpreter.run(build_program(module, machine_text), inputs)
    ref = evaluate(load_model(path)[0], inputs)
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    with pytest.raises(LpucError, match="partitioned already, over 2 chips"):
        compile_model(path, options=CompileOptions(scheduler="list", chips=4))
    with pytest.raises(LpucError, match="by_hand is partitioned already"):
        partition(load_model(path)[0], Target(MACHINE, 2), "pipeline")


def _by_hand(result: str, attrs: str) -> str:
    """BY_HAND (weights by made-up keys: lowering needs no data) with the attributes of the op defining
    `result` written as `attrs`."""
    lines = BY_HAND.format(w_up="sha256:0", w_down="sha256:1").splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(f"  %{result} = "):
            lines[i] = line[:line.index("{")] + "{" + attrs + "}" + line[line.rindex("}") + 1:]
    return "".join(lines)


@pytest.mark.parametrize("result, attrs, message", [
    ("up", 'split = "heads", parts = [0, 1]', "%up = graph.matmul: split = 'heads', but lowering splits this "
                                              "graph.matmul by 'columns' or 'rows' only"),
    ("up", 'split = "columns"', "%up = graph.matmul: a split needs `parts`"),
    ("up", 'split = "rows", parts = [0, 1], shares = [1]', "%up = graph.matmul: .* one positive share per part"),
    ("up", 'split = "rows", parts = [0, 1], shares = [1, 0]', "%up = graph.matmul: .* one positive share per part"),
    ("up", "parts = [0, 1]", "%up = graph.matmul: `parts` and `shares` describe a split; the op has no `split`"),
    ("act", 'split = "columns", parts = [0, 1]', "%act = graph.relu: split = 'columns', but lowering splits this "
                                                 "graph.relu not at all"),
])
def test_a_split_its_rule_does_not_declare_is_refused(result, attrs, message):
    from lpuc.compiler.lower import lower
    from lpuc.ir import VerifyError, parse
    from lpuc.ir.verifier import verify

    with pytest.raises(VerifyError, match=message):
        lower(verify(parse(_by_hand(result, attrs))), Target(MACHINE, 2))


def test_a_split_part_on_a_chip_the_module_lacks_is_refused():
    from lpuc.ir import VerifyError, parse
    from lpuc.ir.verifier import verify

    with pytest.raises(VerifyError, match=r"%up = graph.matmul: parts = \[1, 2\] names a chip outside the module's 2"):
        verify(parse(_by_hand("up", 'split = "columns", parts = [1, 2]')))


def test_partition_writes_the_rules_preferred_tiling(graphs):
    """Every split the partition writes is its lowering rule's preferred tiling, over as many chips as the rule
    has tiles (tensor, 8 chips), on every sample; ops the rules cannot split are not."""
    from lpuc.compiler.lower import tilings

    seen = set()
    for name in MODELS:
        graph = _graph(graphs, name)
        constants = {op.result.name for op in graph.ops if op.name == "graph.constant"}
        for op, placed in zip(graph.ops, partition(graph, Target(MACHINE, 8), "tensor").ops):
            offered = tilings(op, constants, MACHINE.lanes)
            if offered:
                kind, tiles = next(iter(offered.items()))
                assert placed.attrs["split"] == kind and len(placed.attrs["parts"]) == min(8, tiles)
                seen.add(kind)
            else:
                assert "split" not in placed.attrs
    assert seen == {"columns", "rows", "heads"}

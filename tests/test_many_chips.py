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
from lpuc.compiler.driver import load_model, max_relative_error
from lpuc.compiler.partition import plan_partition
from lpuc.compiler.pipeline import CompileOptions, compile_module, default_chips
from lpuc.ir import LpucError
from lpuc.ir import machine_ops as mo
from lpuc.ir.machine import read_machine
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
                                     CompileOptions(scheduler="list", chips=chips, partition=strategy))
    assert summary.chips == chips and summary.partition == strategy and module.attrs["chips"] == chips
    used = {mo.chip_of(op) for op in module.ops if mo.unit_class(op.name)}
    sends = [op for op in module.ops if op.name == "c2c.send"]
    assert len(used) > 1 and sends and summary.transfers == len(sends)
    result = interpreter.run(build_program(module, MACHINE_TEXT), _npz(name, "inputs"))
    ref = _npz(name, "outputs")
    assert max(max_relative_error(result.outputs[k], ref[k]) for k in ref) <= 1e-4
    assert result.stats.cycles == summary.cycles


def test_pipeline_is_contiguous_and_balanced(graphs):
    graph = _graph(graphs, "llama_prefill")
    part = plan_partition(graph, MACHINE, 4, "pipeline")
    homes = [h for op, h in zip(graph.ops, part.home) if op.name != "graph.constant"]
    assert homes == sorted(homes) and set(homes) == {0, 1, 2, 3}
    lines = part.describe(graph)
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


def test_transfers_take_the_topology_route():
    net = network(MACHINE, 16)  # two dragonfly nodes: chip 1 -> chip 10 is local, global, local
    route = net.route(1, 10)
    assert len(route) <= 3 and net.destination(1, route)[0] == 10
    assert net.hops(1, route)[0] == (1, route[0])
    for c, p in net.links():
        assert net.peer(*net.peer(c, p)) == (c, p)


@pytest.mark.parametrize("kind,extra,sizes,bad", [
    ("dragonfly", {}, [1, 2, 5, 8, 16, 64], [9, 12]),
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
                                     CompileOptions(scheduler="list", chips=4, partition="pipeline"))
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
    here = lpu_bytes(module, MACHINE_TEXT, lpu_options(options, 4), summary.facts())
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

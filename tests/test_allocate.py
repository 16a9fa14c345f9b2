"""SRAM allocation: simultaneously live values never share a word (checked by
brute force with liveness recomputed here), constants are never freed,
extents fit the machine, and a model too big for a chip says by how much."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lpuc.ir.machine_ops as mo
from lpuc.compiler.allocate import Allocate, apply_allocation, plan_allocation
from lpuc.compiler.driver import load_model
from lpuc.compiler.lower import evaluate_machine, lower
from lpuc.ir import DType, LpucError, TensorType
from lpuc.ir.builder import Builder
from lpuc.ir.layout import rows_cols, vector_cols, words
from lpuc.ir.machine import SHIPPED, load_machine, parse_machine
from lpuc.ir.schedule_facts import describe, view_bases
from lpuc.ir.target import Target
from lpuc.ir.verifier import verify
from helpers import LANES
from test_lower import every_op, wide_matmuls

ROOT = Path(__file__).resolve().parents[1]
TSP_V1 = Target(load_machine("tsp-v1"))
TSP = (SHIPPED / "tsp-v1.toml").read_text()


def small_machine(slices: int, words_per_slice: int):
    text = TSP.replace("slices = 88", f"slices = {slices}").replace(
        "words_per_slice = 8192", f"words_per_slice = {words_per_slice}")
    return parse_machine(text.replace('name = "tsp-v1"', 'name = "tiny"'), "tiny.toml")


def liveness(module):
    """(first, last) op index of every SRAM value; readers through views count."""
    kind, covers = {}, {}
    first, last = {}, {}
    for i, op in enumerate(module.ops):
        if mo.unit_class(op.name) is not None:
            for v in op.operands:
                for base in covers.get(v.name, ()):
                    last[base] = i
        for r in op.results:
            if mo.is_view(op.name):
                covers[r.name] = set().union(*(covers[v.name] for v in op.operands))
            elif op.name not in ("mxm.install", "host.output"):
                covers[r.name] = {r.name}
                first[r.name] = i
                last.setdefault(r.name, i)
                kind[r.name] = op.name
    for name, k in kind.items():
        if k == "mem.constant":
            first[name], last[name] = -1, len(module.ops)  # the image: live throughout
    return first, last


def check_allocation(module, allocation, target):
    machine = target.machine
    extents = allocation.as_dict()
    first, last = liveness(module)
    types = {r.name: r.type for op in module.ops for r in op.results}
    assert sorted(extents) == sorted(first), "every SRAM value and nothing else is allocated"
    for name, ext in extents.items():
        assert sum(n for _, _, n in ext) == words(types[name], LANES)
        for s, w, n in ext:
            assert 0 <= s < machine.sram.slices and 0 <= w and w + n <= machine.sram.words_per_slice and n > 0
    # brute force: word -> owners; owners of one word must have disjoint live ranges
    owners: dict[tuple[int, int], list[str]] = {}
    for name, ext in extents.items():
        for s, w, n in ext:
            for x in range(w, w + n):
                owners.setdefault((s, x), []).append(name)
    for word, names in owners.items():
        spans = sorted((first[n], last[n], n) for n in names)
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            assert a1 < b0, f"{an} [{a0}, {a1}] and {bn} [{b0}, {b1}] share word {word}"
    peak = max(sum(words(types[n], LANES) for n in first if first[n] <= i <= last[n]) for i in range(len(module.ops)))
    assert allocation.peak_words == peak
    return owners


@pytest.mark.parametrize("build", [wide_matmuls, every_op], ids=["wide_matmuls", "every_op"])
def test_hand_built_no_overlap(build):
    module = lower(build()[0], TSP_V1)
    allocation = plan_allocation(module, TSP_V1)
    check_allocation(module, allocation, TSP_V1)


@pytest.mark.parametrize("name", ["gpt2_decode", "llama_prefill"])
def test_samples_no_overlap(name):
    module = lower(load_model(ROOT / "samples" / f"{name}.onnx")[0], TSP_V1)
    allocation = plan_allocation(module, TSP_V1)
    owners = check_allocation(module, allocation, TSP_V1)
    constants = {op.result.name for op in module.ops if op.name == "mem.constant"}
    for names in owners.values():
        if constants & set(names):
            assert len(names) == 1, "a constant's words are never given to another value"
    assert allocation.image_words == sum(words(op.result.type, LANES) for op in module.ops if op.name == "mem.constant")


def test_reuse_under_pressure():
    """A machine with little SRAM forces reuse and cutting values over slices; still no overlap."""
    module, inputs = every_op()
    lowered = lower(module, TSP_V1)
    big = plan_allocation(lowered, TSP_V1)
    slices = 6
    tiny = Target(small_machine(slices, -(-big.peak_words // slices) + 2))
    allocation = plan_allocation(lowered, tiny)
    owners = check_allocation(lowered, allocation, tiny)
    assert max(len(v) for v in owners.values()) > 1, "expected words to be reused"
    assert allocation.peak_words == big.peak_words


def test_words_just_freed_are_taken_last():
    """Next-fit: with room to spare, no value takes words another value held (each would have to wait for
    the readers of the one before); under pressure words are reused (test_reuse_under_pressure)."""
    module, _ = every_op()
    lowered = lower(module, TSP_V1)
    owners = check_allocation(lowered, plan_allocation(lowered, TSP_V1), TSP_V1)
    assert max(len(v) for v in owners.values()) == 1


def test_f32_values_spread_over_slices():
    module = lower(wide_matmuls()[0], TSP_V1)
    allocation = plan_allocation(module, TSP_V1)
    types = {r.name: r.type for op in module.ops for r in op.results}
    bases = view_bases(module)
    installed = {b for op in module.ops if op.name == "mxm.install" for v in op.operands for b in bases.get(v.name, ())}
    assert any(not mo.is_constant(op.name) for op in module.ops for r in op.results if r.name in installed)
    for name, ext in allocation.extents:
        if types[name].dtype is DType.f32 and words(types[name], LANES) >= 4:
            tiles = -(-rows_cols(types[name])[0] // LANES) * vector_cols(types[name], LANES)
            # what an install reads (a weight, or an activation such as attention's keys), when of more tiles
            # than stripes: a tile a slice, so every plane can load at once; anything else: over 4 slices
            want = tiles if name in installed and tiles > 4 else 4
            assert len({s for s, _, _ in ext}) == want, name


def test_weight_tiles_in_slices_of_their_own():
    # w1 [333, 700] f32: 3 vector columns of 2 k-tiles (320 and 13 rows), w2 [700, 333]: 2 of 3; more tiles
    # than 4 stripes: a tile a slice, all in different slices, so installs on every plane can read at once
    module = lower(wide_matmuls()[0], TSP_V1)
    allocated = verify(apply_allocation(module, plan_allocation(module, TSP_V1)))
    extents = {op.result.name.split(".")[0]: op.attrs["out"] for op in allocated.ops if mo.is_constant(op.name)}
    for name, rows, columns in (("w1", 333, 3), ("w2", 700, 2)):
        tiles = [min(320, rows - r) * 4 for r in range(0, rows, 320)] * columns
        assert [n for _, _, n in extents[name]] == tiles, name
        assert len({s for s, _, _ in extents[name]}) == len(tiles), name
    facts = describe(allocated, TSP_V1)
    weights = {b for b, base in enumerate(facts.bases) if base.name.split(".")[0] in ("w1", "w2")}
    installs = [ins for ins in facts.instructions if ins.op.name == "mxm.install" and set(ins.read_bases) <= weights]
    assert len(installs) == 6 + 6 + 6  # h (w1), its vec_left (w1) and h2 (w2)
    assert all(len(ins.cost.reads) == 1 for ins in installs)


def test_apply_writes_out_in_result_order():
    module, inputs = every_op()
    lowered = lower(module, TSP_V1)
    allocation = plan_allocation(lowered, TSP_V1)
    allocated = verify(apply_allocation(lowered, allocation))
    extents = allocation.as_dict()
    for op in allocated.ops:
        if mo.is_view(op.name) or op.name in ("mxm.install", "host.output"):
            assert "out" not in op.attrs
        else:
            assert op.attrs["out"] == tuple(e for r in op.results for e in extents[r.name])
    np.testing.assert_equal(evaluate_machine(allocated, inputs), evaluate_machine(lowered, inputs))


def test_deterministic():
    module = lower(every_op()[0], TSP_V1)
    assert plan_allocation(module, TSP_V1) == plan_allocation(module, TSP_V1)
    assert Allocate(stripes=1).plan(module, TSP_V1) != plan_allocation(module, TSP_V1)


def test_out_of_memory_names_needed_available_and_chips():
    b = Builder()
    x = b.input("x", TensorType((40, 320), DType.f32))          # 160 words
    w = b.constant(np.ones((320, 320), np.float32), name="w")   # 1280 words
    b.output("y", b.op("graph.matmul", x, w))
    module = lower(b.build("too_big"), TSP_V1)
    tiny = Target(small_machine(2, 256))                         # 512 words = 163,840 bytes
    with pytest.raises(LpucError) as e:
        plan_allocation(module, tiny)
    msg = str(e.value)
    peak = plan_allocation(module, TSP_V1).peak_bytes
    assert f"needs {peak} bytes" in msg and "a chip has 163840 bytes" in msg
    assert f"fit on {-(-peak // 163840)} chips" in msg and "\n" not in msg

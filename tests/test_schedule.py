"""The list scheduler: an independent checker of every rule of docs/machine-ir.md
(written from the contract, sharing only ir.costs and ir.layout with the
compiler), determinism, and the lower bound."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lpuc.ir.machine_ops as mo
from lpuc.compiler.driver import compile_model, load_model
from lpuc.compiler.lower import evaluate_machine
from lpuc.compiler.pipeline import CompileOptions, compile_module
from lpuc.ir import Module
from lpuc.ir.costs import cost, units
from lpuc.ir.layout import extent_starts, sub_extents, view_extents, window_extents, words
from lpuc.ir.machine import load_machine
from lpuc.ir.printer import print_module
from lpuc.ir.schedule_facts import places

from helpers import compiled_sample, legacy_transformer, save

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "samples").glob("*.onnx") if "_op23" not in p.name)
MACHINE = load_machine("tsp-v1")


def check_schedule(module: Module, machine=MACHINE) -> int:
    """Check a scheduled module against the contract; return its length in cycles."""
    errors: dict[str, list[str]] = defaultdict(list)  # the first few errors of each rule

    def fail(msg, rule="other"):
        if len(errors[rule]) < 5:
            errors[rule].append(msg)

    kind = places(module)  # where each value lives, as the registry declares
    types = {v.name: v.type for v in module.inputs}
    for op in module.ops:
        for r in op.results:
            types[r.name] = r.type
    assert module.attrs.get("machine") == machine.name

    extents, bases, land = {}, {}, {}
    sram, n_units = machine.sram, units(machine)
    busy = defaultdict(list)            # resource -> [(start, end, op label)]
    writes = defaultdict(list)          # (slice, word) -> [(landing, value)]
    reads = []                          # (slice, word, cycle, finish, allowed values, label)
    installs, length = {}, 0
    plane_spans = defaultdict(list)     # plane -> [(install issue, matmul end, weight)]
    install_lands = defaultdict(list)   # plane -> [(landing, weight)]
    for op in module.ops:
        c, where = op.attrs.get("cycle"), op.label()
        if c is None or c < 0:
            fail(f"{where}: no valid cycle")
            continue
        if mo.is_view(op.name):
            if "unit" in op.attrs or "out" in op.attrs:
                fail(f"{where}: a view has a unit or out")
            r = op.result
            extents[r.name] = view_extents(op.name, op.attrs, [v.type for v in op.operands],
                                           [extents[v.name] for v in op.operands], machine.lanes)
            bases[r.name] = frozenset().union(*(bases[v.name] for v in op.operands))
            land[r.name] = max(land[v.name] for v in op.operands)
            continue
        sram_results = [r for r in op.results if kind[r.name] == "sram"]
        out = op.attrs.get("out", ())
        if sum(n for _, _, n in out) != sum(words(r.type, machine.lanes) for r in sram_results):
            fail(f"{where}: out covers {sum(n for _, _, n in out)} words, results need "
                 f"{sum(words(r.type, machine.lanes) for r in sram_results)}")
            continue
        for s, w, n in out:
            if not (0 <= s < sram.slices and w >= 0 and w + n <= sram.words_per_slice):
                fail(f"{where}: extent {(s, w, n)} outside SRAM")
        pos, result_ext = 0, []
        for r in sram_results:
            result_ext.append(sub_extents(out, pos, words(r.type, machine.lanes)))
            extents[r.name], bases[r.name] = result_ext[-1], frozenset([r.name])
            pos += words(r.type, machine.lanes)
        if mo.is_constant(op.name):
            if c != 0 or "unit" in op.attrs:
                fail(f"{where}: a constant must have cycle 0 and no unit")
            for r, ext in zip(sram_results, result_ext):
                land[r.name] = -1  # the SRAM image is in place before cycle 0
                for s, w, n in ext:
                    for x in range(w, w + n):
                        writes[(s, x)].append((-1, r.name))
            continue
        cls = mo.unit_class(op.name)
        unit = op.attrs.get("unit", "")
        if not (unit.startswith(cls) and unit[len(cls):].isdigit() and int(unit[len(cls):]) < n_units[cls]):
            fail(f"{where}: unit {unit!r} is not a {cls} instance")
        sram_operands = [v for v in op.operands if kind[v.name] in ("sram", "view")]
        read_ext = {v.name: extents[v.name] for v in sram_operands}
        if mo.reads_window(op):  # an install reads just its tile's words
            wt = op.operands[0]
            read_ext[wt.name] = window_extents(wt.type, extents[wt.name], *mo.window(op.attrs, wt.type), machine.lanes)
        k = cost(op, machine, [read_ext[v.name] for v in sram_operands], result_ext)
        occ, lat = k.occupancy, k.latency
        length = max(length, c + lat)
        streams = op.attrs.get("streams", ())
        if len(streams) != len(sram_operands) + len(sram_results) or len(set(streams)) != len(streams) \
                or not all(0 <= x < machine.streams.east + machine.streams.west for x in streams):
            fail(f"{where}: streams {streams} (need {len(sram_operands) + len(sram_results)} distinct ids)")
        busy[unit].append((c, c + occ, where))
        for x in streams:
            busy[f"stream{x}"].append((c, c + lat, where))
        for s, n in k.reads:
            busy[f"slice{s}.read"].append((c, c + -(-n // sram.read_ports), where))
        for s, n in k.writes:
            n = -(-n // sram.write_ports)
            busy[f"slice{s}.write"].append((c + lat - n, c + lat, where))
        # operands: rule 1 and 2, word by word; plane and value-level read after write
        for v in op.operands:
            if kind[v.name] == "plane":
                if installs.get(v.name) is None:
                    fail(f"{where}: its weight {v} was used already")
                    continue
                i_op, i_c, i_land = installs[v.name]
                if unit != i_op.attrs.get("unit"):
                    fail(f"{where}: runs on {unit}, its weight is on {i_op.attrs.get('unit')}")
                if c < i_land:
                    fail(f"{where}: issues at {c} before its weight lands at {i_land}")
                installs[v.name] = None  # used once
                plane_spans[unit].append((i_c, c + occ, v.name))
            elif kind[v.name] in ("sram", "view"):
                if c < land[v.name]:
                    fail(f"{where}: reads {v} at {c} before it lands at {land[v.name]}", "lands")
                for s, w, n in read_ext[v.name]:
                    for x in range(w, w + n):
                        reads.append((s, x, c, c + occ, bases[v.name], where))
        for r, ext in zip(sram_results, result_ext):
            land[r.name] = c + lat
            for s, w, n in ext:
                for x in range(w, w + n):
                    writes[(s, x)].append((c + lat, r.name))
        for r in op.results:
            if kind[r.name] == "plane":
                installs[r.name] = (op, c, c + lat)
                install_lands[unit].append((c + lat, r.name))
            elif kind[r.name] == "host" and r.name not in land:
                land[r.name] = c + lat

    # rule 3: no resource held twice in one cycle
    for res in sorted(busy):
        spans = sorted(s for s in busy[res] if s[1] > s[0])
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                fail(f"{res} held by {an} [{a0}, {a1}) and {bn} [{b0}, {b1})", f"resource {res}")
    # rule 5: no other install lands on a plane between an install and its matmul
    for unit, events in plane_spans.items():
        for start, end, name in events:
            for t, other in install_lands[unit]:
                if other != name and start <= t < end:
                    fail(f"{unit}: install {other} lands at {t}, between {name}'s install and its matmul")
    for name, info in installs.items():
        if info is not None:
            fail(f"install %{name} is used by no matmul")
    # rules 1 and 2, word by word
    history = {}
    for key, ws in writes.items():
        ws.sort()
        if ws[0][0] == -1 and len(ws) > 1:  # rule 6: the image is never written again
            fail(f"word {key} of constant {ws[0][1]} is also written by {ws[1][1]}", "constants")
        for (t0, v0), (t1, v1) in zip(ws, ws[1:]):
            if t0 == t1:
                fail(f"word {key}: {v0} and {v1} both land at {t0}", "same landing")
        history[key] = ([t for t, _ in ws], [v for _, v in ws])
    for s, x, c, finish, allowed, where in reads:
        times, values = history.get((s, x), ([], []))
        i = bisect_right(times, c) - 1
        if i < 0 or values[i] not in allowed:
            fail(f"{where}: at cycle {c} word ({s}, {x}) holds {values[i] if i >= 0 else 'nothing'}, "
                 f"not its operand", "read after write")
        elif i + 1 < len(times) and times[i + 1] < finish:
            fail(f"{where}: word ({s}, {x}) is overwritten by {values[i + 1]} at {times[i + 1]}, "
                 f"before the read finishes at {finish}", "write after read")
    if errors:
        raise AssertionError("\n".join(m for rule in errors for m in errors[rule]))
    return length


def compiled(path: Path):
    module, summary, _ = compiled_sample(path.stem)
    return load_model(path)[0], module, summary


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 99), st.integers(0, 5)), max_size=12),
       st.integers(0, 40), st.integers(0, 40))
def test_sub_extents_by_bisection_are_the_words_in_order(extents, offset, count):
    """The words [offset, offset + count) of the sequence, word by word, whether sub_extents finds the
    first extent by bisection on given starts or not (zero-length extents included)."""
    every = [(s, w + k) for s, w, n in extents for k in range(n)]
    for got in (sub_extents(extents, offset, count), sub_extents(extents, offset, count, extent_starts(extents))):
        assert [(s, w + k) for s, w, n in got for k in range(n)] == every[offset:offset + count]
        assert all(n > 0 for *_, n in got)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_samples_schedule_legally(path):
    graph, scheduled, summary = compiled(path)
    assert check_schedule(scheduled) == summary.cycles
    cycles = [op.attrs["cycle"] for op in scheduled.ops]
    assert cycles == sorted(cycles), "ops are not in cycle order"
    assert summary.critical_path <= summary.lower_bound <= summary.cycles
    assert summary.resource_bound <= summary.lower_bound
    assert summary.instructions == sum(1 for op in scheduled.ops if mo.unit_class(op.name) is not None)


@pytest.mark.parametrize("name", ["wide_matmuls", "every_op"])
def test_hand_built_schedule_legally(name):
    from test_lower import HAND
    graph, inputs = HAND[name]()
    scheduled, summary = compile_module(graph, MACHINE, CompileOptions(precision="fp32"))  # compared with fp32
    assert check_schedule(scheduled) == summary.cycles
    assert summary.lower_bound <= summary.cycles
    # scheduling keeps the semantics (the untimed machine evaluator runs the scheduled program)
    from lpuc.ir.evaluator import evaluate
    from test_lower import rel_error
    assert rel_error(evaluate_machine(scheduled, inputs), evaluate(graph, inputs)) <= 1e-5


def test_schedule_under_sram_pressure():
    """Little SRAM: many write-after-read dependences; the schedule must still be legal."""
    from test_allocate import small_machine
    from test_lower import every_op
    graph, _ = every_op()
    roomy = compile_module(graph, MACHINE)[1]
    tiny = small_machine(6, -(-roomy.sram_peak_bytes // 320 // 6) + 2)
    scheduled, summary = compile_module(graph, tiny)
    assert check_schedule(scheduled, tiny) == summary.cycles


def test_deterministic():
    path = next(p for p in SAMPLES if p.stem == "llama_decode")
    graph, first, summary = compiled(path)
    again, summary2 = compile_module(load_model(path)[0], MACHINE)
    assert print_module(again) == print_module(first)
    assert summary2.facts() == summary.facts() and summary2.cycles == summary.cycles


def _mutate(module, index, **attrs):
    ops = list(module.ops)
    op = ops[index]
    ops[index] = type(op)(op.name, op.operands, op.results, {**dict(op.attrs), **attrs})
    return module.replace(ops=tuple(ops))


def _instructions(module, prefix):
    return [(i, op) for i, op in enumerate(module.ops) if op.name.startswith(prefix) and "unit" in op.attrs]


def test_checker_catches_violations():
    """The checker is only worth something if it fails broken programs."""
    path = next(p for p in SAMPLES if p.stem == "gpt2_prefill")
    _, good, _ = compiled(path)
    check_schedule(good)

    def broken(module, match):
        with pytest.raises(AssertionError, match=match):
            check_schedule(module)

    vxm = _instructions(good, "vxm.")
    # a unit held twice: a second VXM instruction moved onto another's ALU and cycle
    (i, a), (j, b) = vxm[len(vxm) // 2], vxm[len(vxm) // 2 + 1]
    broken(_mutate(good, j, unit=a.attrs["unit"], cycle=a.attrs["cycle"]), f"{a.attrs['unit']} held by")
    # a stream register held twice
    other_unit = "vxm15" if a.attrs["unit"] != "vxm15" else "vxm14"
    broken(_mutate(good, j, unit=other_unit, cycle=a.attrs["cycle"],
                   streams=(a.attrs["streams"][0],) + b.attrs["streams"][1:]), f"stream{a.attrs['streams'][0]} held")
    # read before write: issue a consumer before its operand lands
    names = {r.name: k for k, op in enumerate(good.ops) for r in op.results}
    k, consumer = next((k, op) for k, op in vxm if any(good.ops[names[v.name]].name.startswith("vxm")
                                                        for v in op.operands))
    producer = next(good.ops[names[v.name]] for v in consumer.operands if good.ops[names[v.name]].name.startswith("vxm"))
    broken(_mutate(good, k, cycle=producer.attrs["cycle"] + 1), "before")
    # results written over a live value: the weights the last install reads
    last_install = max((op for op in good.ops if op.name == "mxm.install"), key=lambda op: op.attrs["cycle"])
    weight = good.ops[names[last_install.operands[0].name]]
    while weight.name != "mem.constant":
        weight = good.ops[names[weight.operands[0].name]]
    need = sum(n for *_, n in consumer.attrs["out"])
    ws, ww, wn = weight.attrs["out"][0]
    assert wn >= need
    broken(_mutate(good, k, out=((ws, ww, need),)), "not its operand")
    # out of bounds
    s, w, n = consumer.attrs["out"][0]
    broken(_mutate(good, k, out=((MACHINE.sram.slices, w, n),) + consumer.attrs["out"][1:]), "outside SRAM")
    # a matmul on another plane than its install
    m, mm = _instructions(good, "mxm.matmul")[0]
    other = next(f"mxm{p}" for p in range(4) if f"mxm{p}" != mm.attrs["unit"])
    broken(_mutate(good, m, unit=other), "weight is on")


def test_checker_catches_an_install_between_install_and_matmul():
    path = next(p for p in SAMPLES if p.stem == "gpt2_prefill")
    _, good, _ = compiled(path)
    pairs = {}
    for i, op in enumerate(good.ops):
        if op.name == "mxm.install":
            pairs[op.result.name] = [i, None]
        elif op.name == "mxm.matmul":
            pairs[op.operands[1].name][1] = i
    (i1, m1), (i2, m2) = list(pairs.values())[:2]
    # move the second pair onto the first's plane, its install landing inside the first pair's span
    inst1, mat1, inst2 = good.ops[i1], good.ops[m1], good.ops[i2]
    lat2 = cost_of(good, i2)
    t = mat1.attrs["cycle"] - lat2  # lands exactly when the first matmul issues
    mutated = _mutate(_mutate(good, i2, unit=inst1.attrs["unit"], cycle=t), m2, unit=inst1.attrs["unit"])
    with pytest.raises(AssertionError, match="between"):
        check_schedule(mutated)


def cost_of(module, index):
    """Latency of an instruction (it does not depend on the read extents)."""
    op = module.ops[index]
    return cost(op, MACHINE, [], [op.attrs.get("out", ())] if op.attrs.get("out") else []).latency


def test_checker_catches_write_after_read(tmp_path):
    # four layers: a layer's values take the words of theirs two layers before (compiler/allocate.py), so words
    # are written again (the samples' chips have room enough never to reuse a word)
    path = save(legacy_transformer(width=64, heads=4, layers=4, seq=7), tmp_path / "four_layers.onnx")
    good = compile_model(path)[0]
    index = {r.name: k for k, op in enumerate(good.ops) for r in op.results}
    word_writers: dict = defaultdict(list)
    for k, op in enumerate(good.ops):
        if "unit" in op.attrs:
            for s, w, n in op.attrs.get("out", ()):
                word_writers[(s, w)].append(k)
    direct_readers = defaultdict(list)
    for k, op in enumerate(good.ops):
        if "unit" in op.attrs:
            for v in op.operands:
                if v.name in index:
                    direct_readers[index[v.name]].append(k)
    for word in sorted(word_writers):
        ks = sorted(word_writers[word], key=lambda k: good.ops[k].attrs["cycle"])
        for k1, k2 in zip(ks, ks[1:]):
            single = len(good.ops[k1].results) == 1 and good.ops[k1].attrs["out"][0][:2] == word
            if single and direct_readers[k1]:
                r = max(direct_readers[k1], key=lambda k: good.ops[k].attrs["cycle"])
                lat = cost_of(good, k2)
                mutated = _mutate(good, k2, cycle=good.ops[r].attrs["cycle"] + 1 - lat)  # lands mid-read
                with pytest.raises(AssertionError, match="before the read finishes"):
                    check_schedule(mutated)
                return
    raise AssertionError("no reused word found")


def test_forward_backward_rounds_are_legal_and_never_worse():
    path = next(p for p in SAMPLES if p.stem == "gemma_decode")
    graph = load_model(path)[0]
    improved, summary = compile_module(graph, MACHINE, CompileOptions(scheduler="list"))
    plain, plain_summary = compile_module(graph, MACHINE, CompileOptions(scheduler="list", rounds=0))
    assert check_schedule(plain) == plain_summary.cycles
    assert summary.cycles <= plain_summary.cycles
    assert summary.lower_bound == plain_summary.lower_bound  # the bound does not depend on the schedule


def test_summary():
    path = next(p for p in SAMPLES if p.stem == "gpt2_decode")
    graph, scheduled, s = compiled(path)
    assert s.machine == "tsp-v1" and s.ops == len(scheduled.ops)
    assert s.gap == s.cycles / s.lower_bound - 1 >= 0
    assert 0 < s.sram_image_bytes <= s.sram_peak_bytes <= MACHINE.sram.chip_bytes
    assert s.microseconds == s.cycles / 900
    with pytest.raises(Exception, match="unknown scheduler"):
        compile_module(graph, MACHINE, CompileOptions(scheduler="magic"))

"""The one description of a scheduled program (ir.schedule_facts) against the
interpreter's own derivation of the same facts, on every sample at 1 and 4
chips: per instruction its unit class, reads, writes, cost, port and link
holds, stream registers; the program's length; the SRAM peak of every chip.
And a machine whose link is faster than a slice port: a transfer's window is
the one the interpreter times (its words are read out of SRAM no faster than
the ports allow)."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import pytest

from lpuc.backends.interpreter import _Plan, run, schedule_stats
from lpuc.backends.lpu import build_program
from lpuc.backends.trace import transfers_of
from lpuc.compiler.driver import compile_model, compile_program
from lpuc.compiler.pipeline import CompileOptions
from lpuc.ir.costs import cost, link_windows
from lpuc.ir.machine import SHIPPED
from lpuc.ir import schedule_facts
from lpuc.ir.schedule_facts import describe

from helpers import SAMPLES, compiled_sample

NAMES = sorted(p.stem for p in SAMPLES.glob("*.onnx"))
TSP = (SHIPPED / "tsp-v1.toml").read_text()


STATEFUL = "llama_decode+state"  # the decode step with its KV cache resident


@lru_cache(maxsize=None)
def program(name: str, chips: int):
    if name == STATEFUL:
        module, summary, text = compile_model(SAMPLES / "llama_decode.onnx", options=CompileOptions(
            chips=chips, scheduler="list", state="auto"))
    elif chips == 1:
        module, summary, text = compiled_sample(name)
    else:  # the list scheduler: the facts do not depend on who placed the instructions
        module, summary, text = compile_model(SAMPLES / f"{name}.onnx",
                                              options=CompileOptions(chips=chips, scheduler="list"))
    return build_program(module, text)


@pytest.mark.parametrize("chips", [1, 4])
@pytest.mark.parametrize("name", NAMES + [STATEFUL])
def test_the_interpreter_derives_the_same_facts(name, chips):
    p = program(name, chips)
    machine = p.machine
    facts = describe(p.module, p.target)
    plan = _Plan(p.module, p.target)
    assert [i.idx for i in plan.instrs] == [f.index for f in facts.instructions]
    for ins, f in zip(plan.instrs, facts.instructions):
        where = ins.label
        assert (ins.cls, ins.chip, ins.cycle) == (f.unit_class, f.chip, f.cycle), where
        assert (ins.occ, ins.lat) == (f.cost.occupancy, f.cost.latency), where
        assert (ins.port_reads, ins.port_writes) == (f.cost.reads, f.cost.writes), where
        assert [[(s, w, n, plan.bases[b].name) for extents, b in runs for s, w, n in extents] for runs in ins.reads] \
            == [[(s, w, n, facts.bases[b].name) for s, w, n, b in segs] for segs in f.reads], where
        assert [ext for _, ext in ins.writes] == list(f.writes), where
        assert len(ins.streams) == f.streams, where
        holds = [(src, port, off, length) for (_, off, length), (src, port)
                 in zip(link_windows(ins.op, machine, ins.occ), ins.hops)]
        assert holds == list(f.links), where
        if f.fixed_unit is not None:  # a link port, fixed by the route
            assert ins.unit == f"{f.unit_class}{f.fixed_unit}", where
    assert plan.cycles == facts.length == p.cycles
    stats = schedule_stats(p.module, p.target)
    peaks = facts.sram_peak_words()
    assert [c.sram_peak_bytes for c in stats.chips] == \
        [peaks.get(c.chip, 0) * machine.sram.word_bytes for c in stats.chips]


def _all_of(facts) -> tuple:
    return (list(facts.places.items()), list(facts.words.items()), facts.bases,
            [(i.index, i.op, i.unit_class, i.chip, i.reads, i.writes, i.write_bases, i.cost, i.fixed_unit, i.links)
             for i in facts.instructions], facts.length, facts.live())


@pytest.mark.parametrize("options", [{"chips": 1}, {"chips": 4, "weights": False}])
def test_a_compile_takes_the_facts_of_its_allocation_over(options, monkeypatch):
    """The scheduled module rewrites the allocated one (ir.rewrite): its facts are those renumbered, and the
    .lpu's build takes them over again; derived anew, they are the same. A compile derives facts once per
    partition candidate (two on 4 chips), not again for the scheduled module or the .lpu."""
    derived = []
    derive = schedule_facts._describe
    monkeypatch.setattr(schedule_facts, "_describe", lambda module, target: derived.append(module) or derive(
        module, target))
    schedule_facts.forget()
    p = compile_program(SAMPLES / "llama_decode.onnx", scheduler="list", **options)
    assert len(derived) == (1 if options["chips"] == 1 else 2) and all(m is not p.module for m in derived)
    assert p.facts.module is p.module
    assert _all_of(p.facts) == _all_of(derive(p.module, p.target))


def test_a_link_faster_than_a_slice_port(tmp_path):
    """A transfer streams its words out of SRAM at the ports' rate: with a link of ten words a cycle, its
    window is the ports', not the link's, in the trace as in the interpreter."""
    path = tmp_path / "fast-link.toml"
    path.write_text(TSP.replace('name = "tsp-v1"', 'name = "fast-link"')
                    .replace("bytes_per_cycle = 15.5", "bytes_per_cycle = 3200.0"))
    module, summary, text = compile_model(SAMPLES / "gpt2_decode.onnx", path,
                                          CompileOptions(chips=4, scheduler="list"))
    p = build_program(module, text)
    result = run(p, timing_only=True)  # no hazard: the schedule and the interpreter agree
    timed = {e.instruction: e for e in result.trace}
    transfers = transfers_of(p)
    assert transfers
    slower = 0
    for t in transfers:
        send = next(op for op in p.module.ops if op.results[0].name == t.name)
        e = timed[send.label()]
        assert (t.start, t.end, t.land) == (e.start, e.end, e.land)
        slower += cost(send, p.machine).occupancy < e.end - e.start  # the link alone would be quicker
    assert slower


@pytest.mark.parametrize("name, chips", [("llama_decode", 4), (STATEFUL, 1), ("bert_prefill", 1)])
def test_the_sram_lifetimes_and_live_curve_follow_their_definition(name, chips):
    """live() and sram_live() (numpy: events sorted by key and cycle) against their definitions, op by op: a
    constant or state holds its words throughout, a result from landing until its last read ends (at least a
    cycle; an in-place write's are its state's); the curve, per chip and per slice, steps where the words held
    change, to the words held then."""
    facts = program(name, chips).facts
    freed = Counter()
    for ins in facts.scheduled:
        for b in {seg[3] for segs in ins.reads for seg in segs}:
            freed[b] = max(freed[b], ins.cycle + ins.cost.occupancy)
    lands = {ins.index: ins.land for ins in facts.scheduled}
    expected = [(base, 0, max(facts.length, 1)) if base.constant else
                (base, lands[base.producer], max(freed[b], lands[base.producer] + 1))
                for b, base in enumerate(facts.bases) if not base.alias and (base.constant or base.producer in lands)]
    assert facts.live() == expected
    changes: dict = {}
    for base, start, end in expected:
        for key, n in [((base.chip, None), base.words)] + [((base.chip, s), n) for s, _, n in base.extents]:
            at = changes.setdefault(key, Counter())
            at[start] += n
            at[end] -= n
    curves = {}
    for key, at in changes.items():
        level, steps = 0, []
        for t in sorted(at):
            if at[t]:
                level += at[t]
                steps += [t, level]
        if steps:
            curves[key] = steps
    assert {key: curve.tolist() for key, curve in facts.sram_live().items()} == curves
    assert {key: curve.tolist() for key, curve in facts.sram_live(slices=False).items()} == \
        {key: curve for key, curve in curves.items() if key[1] is None}

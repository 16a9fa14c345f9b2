"""Fault injection: perturb valid compiled programs by ONE change each, prove in
the test (from the program's description, ir.schedule_facts, not from the
interpreter) which rule of docs/machine-ir.md the change breaks, and check that
the interpreter reports that hazard, naming the right instruction and resource.

Families:
  raw        an instruction moved earlier than one of its operands lands (rule 1)
  unit       an instruction moved so it overlaps another on its unit (rule 3)
  read_port  ... so its read window on a slice overlaps another's (rule 3)
  write_port ... so its write window on a slice overlaps another's (rule 3)
  clobber    one `out` extent of an instruction moved onto words of a value still
             live across its landing: the value's later readers read overwritten
             words (rule 1), or
  war        ... onto words a reader is still reading when it lands (rule 2), or
  constant   ... onto a constant's words (rule 6)
  state      a stateful decode step: a write outside the step's position, a read of
             the cache before its write lands, a foreign write into state, a read of
             slots never written (the end of this file)

A move can break several rules at once (an earlier issue may also collide on a
unit); the expected hazard must be AMONG those reported. Cases are picked from
sorted candidates by a seeded numpy Generator, one test id each.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pytest

from lpuc.backends import interpreter
from lpuc.backends.interpreter import find_hazards, run
from lpuc.backends.lpu import build_program
from lpuc.backends.state import State
from lpuc.compiler.generate import compile_generation
from lpuc.ir.attributes import AttrDict
from lpuc.ir.core import Module, Op
from lpuc.ir.costs import cost
from lpuc.ir.layout import sub_extents, words
from lpuc.ir.machine import parse_machine
from lpuc.ir.schedule_facts import describe
from lpuc.ir.target import Target

from helpers import SAMPLES, compiled_sample

SAMPLE_NAMES = ("gpt2_prefill", "llama_decode", "gemma_prefill", "bert_prefill", "mixtral_decode")
CASES_PER_SAMPLE = {"raw": 6, "unit": 4, "read_port": 3, "write_port": 3, "clobber": 4, "war": 2, "constant": 2}


# --- the timing of a scheduled program, as the cases need it ------------------------------

@dataclass
class Ins:
    idx: int
    op: Op
    cycle: int
    unit: str
    occ: int
    lat: int
    reads: list            # per SRAM operand: [(slice, word, words, base), ...]
    writes: list           # per SRAM result: extents
    port_reads: tuple      # (slice, words)
    port_writes: tuple

    @property
    def label(self) -> str:
        return self.op.label()

    @property
    def land(self) -> int:
        return self.cycle + self.lat


@dataclass
class Base:
    """A value owning SRAM words: an instruction's result or a constant."""
    name: str
    producer: int | None   # instruction index, None for a constant
    land: int
    extents: tuple
    readers: list = field(default_factory=list)  # (instruction index, slice, word, words)


class Timing:
    """What the cases need of a scheduled program: its description (ir.schedule_facts), by op index and
    by the name of each value owning SRAM words."""

    def __init__(self, module: Module, machine):
        self.module, self.machine = module, machine
        facts = describe(module, Target.of(module, machine))
        self.ins: dict[int, Ins] = {}
        self.bases: dict[str, Base] = {}
        name = [b.name for b in facts.bases]
        for f in facts.instructions:
            reads = [[(s, w, n, name[b]) for s, w, n, b in segs] for segs in f.reads]
            self.ins[f.index] = Ins(f.index, f.op, f.cycle, f.op.attrs["unit"], f.cost.occupancy, f.cost.latency,
                                    reads, list(f.writes), f.cost.reads, f.cost.writes)
        for b in facts.bases:
            producer = None if b.constant else b.producer
            land = 0 if producer is None else self.ins[producer].land
            self.bases[b.name] = Base(b.name, producer, land, b.extents)
        for ins in self.ins.values():
            for rs in ins.reads:
                for s, w, n, b in rs:
                    self.bases[b].readers.append((ins.idx, s, w, n))

    def windows(self, kind: str) -> dict[str, list[tuple[int, int, int]]]:
        """resource -> [(start, end, instruction index)], as docs/machine-ir.md defines them."""
        rp, wp = self.machine.sram.read_ports, self.machine.sram.write_ports
        held = defaultdict(list)
        for ins in self.ins.values():
            c = ins.cycle
            if kind == "unit":
                held[f"unit {ins.unit}"].append((c, c + ins.occ, ins.idx))
            elif kind == "read_port":
                for s, n in ins.port_reads:
                    held[f"the read port of slice {s}"].append((c, c + -(-n // rp), ins.idx))
            else:
                for s, n in ins.port_writes:
                    held[f"the write port of slice {s}"].append((c + ins.lat - -(-n // wp), c + ins.lat, ins.idx))
        return {k: sorted(v) for k, v in sorted(held.items())}


def word_names(extents) -> frozenset[str]:
    return frozenset(f"slice {s} word {x}" for s, w, n, *_ in extents for x in range(w, w + n))


def with_attrs(module: Module, idx: int, **changes) -> Module:
    """The module with op `idx` rebuilt with some attributes replaced (Op is frozen)."""
    op = module.ops[idx]
    new = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, **changes}))
    return module.replace(ops=module.ops[:idx] + (new,) + module.ops[idx + 1:])


# --- the samples, compiled once ----------------------------------------------------

@lru_cache(maxsize=None)
def compiled(sample: str):
    module, _, machine_text = compiled_sample(sample)
    machine = parse_machine(machine_text)
    return module, machine_text, Timing(module, machine)


# --- the perturbations: (perturbed module, expected hazard, why) ----------------------

@dataclass(frozen=True)
class Expect:
    kind: str
    instructions: frozenset[str]   # the hazard names one of these
    resources: frozenset[str]      # ... and one of these


def raw_candidates(t: Timing):
    """(reader, producer): a reader of a word of an instruction's result."""
    out = set()
    for ins in t.ins.values():
        for rs in ins.reads:
            for _, _, _, b in rs:
                if t.bases[b].producer is not None:
                    out.add((ins.idx, t.bases[b].producer))
    return sorted(out)


def make_raw(t: Timing, module, cand, rng):
    x_idx, p_idx = cand
    x, p = t.ins[x_idx], t.ins[p_idx]
    assert x.cycle >= p.land  # the valid program
    new_cycle = int(p.land - 1 - rng.integers(0, min(p.lat, 64)))
    new_cycle = max(new_cycle, 0)
    assert new_cycle < p.land  # proof: x now reads before p's results land (rule 1)
    produced = {r.name for r in p.op.results}
    read_words = word_names([seg for rs in x.reads for seg in rs if seg[3] in produced])
    assert read_words
    why = f"{x.label} moved {x.cycle} -> {new_cycle}, before {p.label} lands at {p.land}"
    return with_attrs(module, x_idx, cycle=new_cycle), Expect("raw", frozenset({x.label}), read_words), why


def pair_candidates(t: Timing, kind: str):
    """(resource, A, B): B after A on one resource (consecutive windows)."""
    out = []
    for res, spans in t.windows(kind).items():
        spans = [s for s in spans if s[1] > s[0]]
        for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
            assert b0 >= a1  # the valid program
            out.append((res, a, b))
    return out


def make_overlap(t: Timing, module, kind, cand, rng):
    res, a_idx, b_idx = cand
    a, b = t.ins[a_idx], t.ins[b_idx]
    spans = {i: (s, e) for s, e, i in t.windows(kind)[res]}
    (a0, a1), (b0, b1) = spans[a_idx], spans[b_idx]
    start = int(rng.integers(a0, a1))        # B's window now starts inside A's
    new_cycle = b.cycle + (start - b0)       # the window's offset from the issue cycle does not move
    if new_cycle < 0:
        return None
    new0, new1 = start, start + (b1 - b0)
    assert new0 < a1 and a0 < new1           # proof: the windows intersect (rule 3)
    why = f"{b.label} moved {b.cycle} -> {new_cycle}: {res} [{new0}, {new1}) vs {a.label} [{a0}, {a1})"
    return (with_attrs(module, b_idx, cycle=new_cycle),
            Expect(kind, frozenset({a.label, b.label}), frozenset({res})), why)


def clobber_candidates(t: Timing, family: str):
    """(X, V, target extent): V owns words and is live across X's landing; X's moved extent will
    overlap `target`. clobber: V an instruction's result, target one of its extents; war: target
    the words a reader of V is still reading when X lands; constant: V a constant."""
    out = []
    for x in t.ins.values():
        if not any(x.writes):
            continue
        own = {r.name for r in x.op.results}
        for v in t.bases.values():
            if v.name in own or not v.extents or (v.producer is None) != (family == "constant"):
                continue
            if family == "war":
                for i, s, w, n in v.readers:
                    r = t.ins[i]
                    if i != x.idx and r.cycle < x.land < r.cycle + r.occ:
                        out.append((x.idx, v.name, (s, w, n)))
                continue
            end = max((t.ins[i].cycle + t.ins[i].occ for i, *_ in v.readers), default=0)
            if v.land < x.land and (x.land < end or v.producer is None):
                out.extend((x.idx, v.name, e) for e in v.extents if e[2])
    return sorted(set(out))


def make_clobber(t: Timing, module, family, cand, rng):
    x_idx, v_name, (vs, vw, vn) = cand
    x, v = t.ins[x_idx], t.bases[v_name]
    wps = t.machine.sram.words_per_slice
    out = list(x.op.attrs["out"])
    j = int(rng.integers(0, len(out)))
    _, _, n = out[j]
    start = min(vw + int(rng.integers(0, vn)), wps - n)
    moved = (vs, start, n)
    others = [e for k, e in enumerate(out) if k != j]
    if any(s == vs and w < start + n and start < w + m for s, w, m in others):
        return None  # would overlap the instruction's own extents: another rule
    out[j] = moved
    new_out = tuple(out)
    clobbered = {(s, z) for s, w, m in v.extents if s == vs
                 for z in range(max(start, w), min(start + n, w + m))}
    if not clobbered:
        return None
    # the new timing: moving words between slices may change the write-port count
    writes, pos = [], 0
    for r in x.op.results:
        writes.append(sub_extents(new_out, pos, words(r.type, t.machine.lanes)))
        pos += words(r.type, t.machine.lanes)
    c = cost(x.op, t.machine, [[seg[:3] for seg in rs] for rs in x.reads], writes)
    land = x.cycle + c.latency
    if not v.land < land:
        return None
    expect = []
    if v.producer is None:  # rule 6: a constant's words are never written again
        const_words = {(s, z) for b in t.bases.values() if b.producer is None
                       for s, w, m in b.extents for z in range(w, w + m)}
        hit = [z for z in range(start, start + n) if (vs, z) in const_words]
        expect.append(Expect("constant", frozenset({x.label}), frozenset({f"slice {vs} word {hit[0]}"})))
    # rule 2: a reader of these words issued before the landing and still reading at it
    read_end: dict[int, int] = {}
    for b in t.bases.values():
        for i, s, w, m in b.readers:
            r = t.ins[i]
            if s == vs and r.cycle < land and i != x_idx:
                for z in range(max(w, start), min(w + m, start + n)):
                    read_end[z] = max(read_end.get(z, 0), r.cycle + r.occ)
    war = [z for z in sorted(read_end) if read_end[z] > land]
    if war:
        expect.append(Expect("war", frozenset({x.label}), frozenset({f"slice {vs} word {war[0]}"})))
    # rule 1: a reader of V issuing at or after the landing reads words that no longer hold V
    for i, s, w, m in v.readers:
        r = t.ins[i]
        hit = [z for z in range(w, w + m) if (s, z) in clobbered]
        if r.cycle >= land and hit and i != x_idx:
            expect.append(Expect("overwritten", frozenset({r.label}), frozenset({f"slice {s} word {hit[0]}"})))
    if not expect or (family == "war" and expect[0].kind != "war"):
        return None  # not live across the new landing (or no read in flight at it)
    why = (f"{x.label} `out` extent {x.op.attrs['out'][j]} -> {moved}, landing at {land} on words of "
           f"%{v.name} (landed {v.land})")
    return with_attrs(module, x_idx, out=new_out), tuple(expect), why


CLOBBER = ("clobber", "war", "constant")


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


@lru_cache(maxsize=None)
def cases(sample: str, family: str) -> tuple:
    """CASES_PER_SAMPLE[family] perturbations of `sample`, picked deterministically."""
    module, _, t = compiled(sample)
    if family == "raw":
        cands = raw_candidates(t)
    elif family in CLOBBER:
        cands = clobber_candidates(t, family)
    else:
        cands = pair_candidates(t, family)
    rng = np.random.default_rng(_seed(sample, family))
    picked = []
    for k in rng.permutation(len(cands)):
        case_rng = np.random.default_rng(_seed(sample, family, k))
        if family == "raw":
            made = make_raw(t, module, cands[k], case_rng)
        elif family in CLOBBER:
            made = make_clobber(t, module, family, cands[k], case_rng)
        else:
            made = make_overlap(t, module, family, cands[k], case_rng)
        if made is not None:
            picked.append(made)
        if len(picked) == CASES_PER_SAMPLE[family]:
            break
    return tuple(picked)


PARAMS = [pytest.param(s, f, i, id=f"{s}-{f}-{i}")
          for s in SAMPLE_NAMES for f, n in CASES_PER_SAMPLE.items() for i in range(n)]


def test_at_least_100_cases():
    assert len(PARAMS) >= 100


@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_unperturbed_programs_are_clean(sample):
    module, machine_text, t = compiled(sample)
    assert find_hazards(build_program(module, machine_text)) == ()
    assert max(i.land for i in t.ins.values()) == build_program(module, machine_text).cycles


@pytest.mark.parametrize("sample,family,i", PARAMS)
def test_fault_is_reported(sample, family, i):
    picked = cases(sample, family)
    assert i < len(picked), f"only {len(picked)} {family} perturbations of {sample} found"
    module, expect, why = picked[i]
    _, machine_text, _ = compiled(sample)
    hazards = find_hazards(build_program(module, machine_text))
    assert hazards, f"no hazard reported: {why}"
    reported = [(h.kind, h.instruction, h.resource) for h in hazards]
    for e in (expect if isinstance(expect, tuple) else (expect,)):
        assert any(k == e.kind and ins in e.instructions and res in e.resources for k, ins, res in reported), (
            f"{why}\nexpected {e.kind} naming one of {sorted(e.instructions)} on one of "
            f"{sorted(e.resources)[:4]}{' ...' if len(e.resources) > 4 else ''}\nreported: {reported[:8]}")


@pytest.mark.parametrize("sample", ["gpt2_prefill", "mixtral_decode"])
@pytest.mark.parametrize("family", ["unit", "read_port", "write_port"])
def test_either_way_of_checking_holds_finds_the_same(sample, family, monkeypatch):
    """check_resources sorts all holds at once when each resource, and each hold by resource and cycle, fit one
    number; else (cycles near MAX_CYCLE, a chip far out of range) resource by resource: the same hazards."""
    module, _, _ = cases(sample, family)[0]
    program = build_program(module, compiled(sample)[1])
    found = [(h.kind, h.cycle, h.instruction, h.resource, str(h)) for h in find_hazards(program)]
    monkeypatch.setattr(interpreter, "_ONE_NUMBER", 0)
    assert found and [(h.kind, h.cycle, h.instruction, h.resource, str(h)) for h in find_hazards(program)] == found


# --- state: the resident KV cache (docs/machine-ir.md, "State") ----------------------------
# Each state write, each state: an out-of-position write (its position operand rewired to another value
# of that type, the token id), an early read (a reader of the written cache moved before the write lands),
# a foreign write (another instruction's first `out` extent moved onto the state's words), and a read of
# slots never written (a step run at a later position on a new generation). The runs are numeric: the
# position is a run-time value.

STATE_SAMPLE = "llama_decode"


@lru_cache(maxsize=None)
def stateful():
    step, _ = compile_generation(SAMPLES / f"{STATE_SAMPLE}.onnx", scheduler="list")
    return step


def step_inputs(position: int, token: int = 7):
    module = stateful().module
    mask = np.zeros(next(v.type.shape for v in module.inputs if v.name == "attention_mask"), np.int64)
    mask[..., :position + 1] = 1
    return {"input_ids": np.asarray([[token]]), "attention_mask": mask, "position_ids": np.asarray([[position]])}


def state_hazards(module):
    step = stateful()
    program = build_program(module, step.machine_text)
    return [(h.kind, h.instruction, h.resource) for h in
            run(program, step_inputs(0), check=False, state=State()).hazards]


def _writes():
    return [i for i, op in enumerate(stateful().module.ops) if op.name == "mem.state_write"]


def test_the_stateful_program_is_clean():
    assert state_hazards(stateful().module) == []


@pytest.mark.parametrize("k", range(4))
def test_a_write_outside_the_steps_position_is_reported(k):
    module = stateful().module
    idx = _writes()[k]
    write = module.ops[idx]
    ids = next(op.result for op in module.ops if op.name == "host.input" and op.attrs["name"] == "input_ids")
    new = Op(write.name, write.operands[:2] + (ids,), write.results, write.attrs)
    bad = module.replace(ops=module.ops[:idx] + (new,) + module.ops[idx + 1:])
    reported = state_hazards(bad)
    assert any(kind == "state" and ins == write.label() for kind, ins, _ in reported), reported


@pytest.mark.parametrize("k", range(4))
def test_a_read_of_the_cache_before_its_write_lands_is_reported(k):
    module = stateful().module
    idx = _writes()[k]
    write = module.ops[idx]
    facts = describe(module, Target.of(module, parse_machine(stateful().machine_text)))
    # the first instruction reading the written cache (through views, too): moved to the write's own cycle
    bases = {b for b, base in enumerate(facts.bases) if base.name == write.result.name}
    reader = min((ins for ins in facts.instructions if bases & set(ins.read_bases)), key=lambda i: i.cycle)
    bad = with_attrs(module, reader.index, cycle=write.attrs["cycle"])
    reported = state_hazards(bad)
    assert any(kind == "state" and ins == reader.op.label() and "slot 0" in res for kind, ins, res in reported), \
        reported


@pytest.mark.parametrize("k", range(4))
def test_a_foreign_write_into_state_is_reported(k):
    module = stateful().module
    states = [op for op in module.ops if op.name == "mem.state"]
    s, w, n = states[k].attrs["out"][0]
    # the last instruction before the state's write whose first extent fits in the state's first one
    victim = next(i for i in reversed(range(len(module.ops))) if module.ops[i].name not in
                  ("mem.state", "mem.state_write", "mem.constant") and module.ops[i].attrs.get("out")
                  and module.ops[i].attrs["out"][0][2] <= n)
    op = module.ops[victim]
    out = ((s, w, op.attrs["out"][0][2]),) + tuple(op.attrs["out"][1:])
    reported = state_hazards(with_attrs(module, victim, out=out))
    assert any(kind == "state" and ins == op.label() for kind, ins, _ in reported), reported


def test_a_read_of_slots_never_written_is_reported():
    step = stateful()
    hazards = run(step, step_inputs(2), check=False, state=State()).hazards
    assert hazards and all(h.kind == "state" and "never written" in str(h) for h in hazards)
    assert {h.resource.split(" slot ")[1] for h in hazards} == {"0"}

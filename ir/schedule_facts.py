"""One description of a machine-level program: what each instruction reads,
writes, costs and holds, and, once it is scheduled, when.

`describe(module, target)` derives it once; every consumer reads it: both
schedulers and their bounds (compiler.schedule_list, compiler.schedule_cpsat),
the allocator (`places`, `view_bases`), the trace, the report, the `.lpu`
manifest's cycles and `lpuc compile`'s statistics. The interpreter derives
the same facts on its own, as the independent checker it is
(tests/test_schedule_facts.py checks that the two agree on every sample).

- places: where each value lives, as its op's definition declares (ir.registry);
- words: per SRAM or view value, the words it names as segments
  (slice, first word, words, base id), views resolved (ir.layout.view_extents)
  to the words of the values owning them (`Base`: an instruction's result or a
  constant of the SRAM image);
- per instruction (`Instruction`): its reads (per SRAM operand), writes (per
  SRAM result, its `out` extents), its cost (ir.costs.cost of exactly those
  words), the stream registers it needs, and what it holds (`holds`: each
  slice's read port while its words stream out, each slice's write port while
  its results land, each link direction of a send's route; besides its unit
  instance for its occupancy and its stream registers for its latency);
- scheduled: each instruction's cycle (its `cycle` attribute), the program's
  length (the largest cycle + latency) and the SRAM live curve (a value holds
  its words from landing until its last read ends; constants throughout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import chain, compress, repeat
from operator import attrgetter, is_not, itemgetter

import numpy as np

from . import machine_ops as mo
from .attributes import AttrDict
from .core import Module, Op
from .costs import Cost, UnitCycles, cost, link_windows
from .errors import LpucError
from .layout import Extent, extent_starts, sub_extents, view_extents, window_extents, words
from .machine import Machine
from .registry import HOST, LINK, OPS, SRAM
from .pieces import stamped_from, template_ops
from .rewrite import rewritten_from
from .sorting import by_key
from .target import Target

VIEW = "view"  # the place of a view's result: it names words of SRAM values
Segment = tuple[int, int, int, int]  # (slice, first word, words, base id)
Hold = tuple[tuple[str, int, int], int, int]  # ((read / write / link, chip, slice or port), offset, length)


def places(module: Module) -> dict[str, str]:
    """Where each value lives: host (model inputs, host.output results), sram, plane (an installed
    weight), link (a transfer in flight) or view."""
    where = {v.name: HOST for v in module.inputs}
    for op in module.ops:
        opdef = OPS[op.name]
        kind = VIEW if opdef.view else opdef.result_place
        for r in op.results:
            where[r.name] = kind
    return where


def view_bases(module: Module) -> dict[str, tuple[str, ...]]:
    """For every SRAM or view value: the SRAM values whose words it may name (a view: all those of its
    operands), in program order. Liveness and dependences go by these."""
    where = places(module)
    order: dict[str, int] = {}
    bases: dict[str, tuple[str, ...]] = {}
    for i, op in enumerate(module.ops):
        for r in op.results:
            order[r.name] = i
            if where[r.name] == SRAM:
                bases[r.name] = (r.name,)
            elif where[r.name] == VIEW:
                found = {b for v in op.operands for b in bases[v.name]}
                bases[r.name] = tuple(sorted(found, key=lambda b: (order[b], b)))
    return bases


# (Base and Instruction are never changed once made, but not frozen: a frozen dataclass's __init__ costs five
# times as much, and a program makes a million of each)
@dataclass(slots=True, unsafe_hash=True)
class Base:
    """A value owning SRAM words: an instruction's result, or a constant (in the SRAM image)."""
    name: str
    chip: int
    extents: tuple[Extent, ...]
    producer: int  # the producing instruction's op index; -1 for a constant or a state
    state: bool = False  # a state (mem.state): pinned like a constant, kept from run to run
    alias: bool = False  # an in-place write's result: the words of its state (counted there)

    @property
    def constant(self) -> bool:
        """Placed before cycle 0 and never freed: a constant or a state."""
        return self.producer < 0

    @property
    def words(self) -> int:
        return sum(n for _, _, n in self.extents)


@dataclass(slots=True, unsafe_hash=True)
class Instruction:
    index: int                                   # op index (program order)
    op: Op
    unit_class: str
    chip: int
    reads: tuple[tuple[Segment, ...], ...]       # per SRAM operand, in operand order: the words it reads
    writes: tuple[tuple[Extent, ...], ...]       # per SRAM result, in result order: its `out` extents
    write_bases: tuple[int, ...]                 # the Base of each SRAM result
    cost: Cost                                   # ir.costs.cost of exactly these reads and writes
    fixed_unit: int | None = None                # tx / rx: the port its route fixes
    links: tuple[tuple[int, int, int, int], ...] = ()  # a send: (chip, port, offset, length) per hop

    @property
    def streams(self) -> int:
        """Stream registers it needs: one per SRAM operand and result."""
        return len(self.reads) + len(self.writes)

    @property
    def cycle(self) -> int | None:
        return self.op.attrs.get("cycle")

    @property
    def land(self) -> int:
        return self.op.attrs["cycle"] + self.cost.latency

    @property
    def read_bases(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(b for segs in self.reads for *_, b in segs))

    def operand_extents(self) -> tuple[tuple[Extent, ...], ...]:
        """Per operand (SRAM or not, in order): the extents it reads (() when not in SRAM)."""
        reads, opdef = iter(self.reads), OPS[self.op.name]
        return tuple(tuple(s[:3] for s in next(reads)) if opdef.operand_place(k) == SRAM else ()
                     for k in range(len(self.op.operands)))

    def holds(self, machine: Machine) -> list[Hold]:
        """The exclusive windows it holds, as ((kind, chip, slice or port), offset from issue, length):
        each slice's read port while its words stream out, each slice's write port while its results land
        (ending at its latency), and each link direction its route takes."""
        c = self.cost
        rp, wp = machine.sram.read_ports, machine.sram.write_ports
        out = [(("read", self.chip, s), 0, -(-n // rp)) for s, n in c.reads]
        out += [(("write", self.chip, s), c.latency - -(-n // wp), -(-n // wp)) for s, n in c.writes]
        out += [(("link", ch, port), off, length) for ch, port, off, length in self.links]
        return out


# (fields read of millions of instructions and bases, by loops in C)
_ATTRS, _READS, _INDEX, _OCCUPANCY, _LATENCY = (attrgetter(f) for f in ("op.attrs", "reads", "index", "cost.occupancy",
                                                                       "cost.latency"))
_PRODUCER, _ALIAS, _EXTENTS, _CHIP = (attrgetter(f) for f in ("producer", "alias", "extents", "chip"))
_BASE = itemgetter(3)  # a segment's base


def attribute_of_each(instructions: Sequence[Instruction], key: str) -> list:
    """Each instruction's attribute `key` (None where it has none), read by loops in C (a million instructions)."""
    return list(map(dict.get, map(AttrDict.as_dict, map(_ATTRS, instructions)), repeat(key)))


@dataclass(frozen=True, eq=False)
class Facts:
    module: Module
    target: Target
    places: Mapping[str, str]
    words: Mapping[str, tuple[Segment, ...]]   # every SRAM and view value
    bases: tuple[Base, ...]
    instructions: tuple[Instruction, ...]      # in program order

    @property
    def machine(self) -> Machine:
        return self.target.machine

    @cached_property
    def by_index(self) -> dict[int, Instruction]:
        return {ins.index: ins for ins in self.instructions}

    @cached_property
    def _cycles(self) -> list[int | None]:
        """Per instruction, its cycle (None: not scheduled)."""
        return attribute_of_each(self.instructions, "cycle")

    @cached_property
    def scheduled(self) -> tuple[Instruction, ...]:
        """The instructions with a cycle."""
        return tuple(compress(self.instructions, map(is_not, self._cycles, repeat(None))))

    @cached_property
    def timing(self) -> np.ndarray:
        """Per scheduled instruction, in order: [cycle, occupancy, latency]."""
        n = len(self.scheduled)
        timing = np.empty((n, 3), np.int64)
        timing[:, 0] = np.fromiter([c for c in self._cycles if c is not None], np.int64, n)
        timing[:, 1] = np.fromiter(map(_OCCUPANCY, self.scheduled), np.int64, n)
        timing[:, 2] = np.fromiter(map(_LATENCY, self.scheduled), np.int64, n)
        return timing

    @cached_property
    def length(self) -> int:
        """The program's length in cycles: the largest cycle + latency."""
        return int((self.timing[:, 0] + self.timing[:, 2]).max(initial=0))

    def live(self) -> list[tuple[Base, int, int]]:
        """Each value owning words with the cycles [start, end) it holds them: a constant for the whole
        program, a result from landing until its last read ends (at least one cycle)."""
        held, start, end = self._lifetimes()
        bases = self.bases
        return [(bases[b], s, e) for b, s, e in zip(held.tolist(), start.tolist(), end.tolist())]

    def _lifetimes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """live(), as arrays: the bases' numbers, starts and ends."""
        scheduled, timing, bases = self.scheduled, self.timing, self.bases
        # a value's words are free when its last read ends
        reads = list(map(_READS, scheduled))
        read = np.fromiter(map(_BASE, chain.from_iterable(chain.from_iterable(reads))), np.int64)
        per_instruction = np.fromiter(map(sum, map(map, repeat(len), reads)), np.int64, len(scheduled))
        freed = np.zeros(len(bases), np.int64)
        np.maximum.at(freed, read, np.repeat(timing[:, 0] + timing[:, 1], per_instruction))
        # a result's words are taken when it lands (its producer scheduled), a constant's throughout
        land = np.full(len(self.module.ops), -1, np.int64)
        land[np.fromiter(map(_INDEX, scheduled), np.int64, len(scheduled))] = timing[:, 0] + timing[:, 2]
        producer = np.fromiter(map(_PRODUCER, bases), np.int64, len(bases))
        alias = np.fromiter(map(_ALIAS, bases), bool, len(bases))
        constant = producer < 0
        start = np.where(constant, 0, land[producer])  # (a constant's producer -1 reads some land: not taken)
        held = np.flatnonzero(~alias & (constant | (start >= 0)))
        start = start[held]
        end = np.where(constant[held], max(self.length, 1), np.maximum(freed[held], start + 1))
        return held, start, end

    def sram_live(self, slices: bool = True) -> dict[tuple[int, int | None], np.ndarray]:
        """The SRAM live curve: (chip, slice, or None for the whole chip) -> a step function, flat [cycle,
        words live from that cycle on, cycle, words, ...] (int64), at every cycle where the words live change;
        by chip, the whole chip before its slices. Without `slices`, only the whole chips'."""
        numbers, start, end = self._lifetimes()
        held = list(map(self.bases.__getitem__, numbers.tolist()))
        per_base = np.fromiter(map(len, map(_EXTENTS, held)), np.int64, len(held))
        some = per_base > 0  # (the values holding words)
        if not some.any():
            return {}
        held, start, end, per_base = list(compress(held, some.tolist())), start[some], end[some], per_base[some]
        n = len(held)
        chip = np.fromiter(map(_CHIP, held), np.int64, n)
        extents = np.fromiter(chain.from_iterable(chain.from_iterable(map(_EXTENTS, held))),
                              np.int64, 3 * int(per_base.sum())).reshape(-1, 3)  # (slice, first word, words)
        # each value changes its chip's key (slot 0) by its words, and with `slices` each of its slices' (s + 1)
        # by the words it holds there
        span = self.machine.sram.slices + 1
        keys, words = chip * span, np.add.reduceat(extents[:, 2], np.cumsum(per_base) - per_base)
        if slices:
            keys = np.concatenate((keys, np.repeat(chip, per_base) * span + extents[:, 0] + 1))
            words = np.concatenate((words, extents[:, 2]))
            start, end = (np.concatenate((x, np.repeat(x, per_base))) for x in (start, end))
        # +words from the start, -words from the end, summed per key and cycle; a key's changes sum to 0, so
        # the running sum over all keys in order is each key's level
        cycles = int(end.max()) + 1
        at, d = by_key(np.concatenate((keys * cycles + start, keys * cycles + end)),  # (by key and cycle)
                       np.concatenate((words, -words)))
        group = np.flatnonzero(np.concatenate(([True], at[1:] != at[:-1])))
        k, t = np.divmod(at[group], cycles)
        d = np.add.reduceat(d, group)
        change = d != 0
        k, t, level = k[change], t[change], np.cumsum(d[change])
        flat = np.stack((t, level), axis=1).ravel()
        names = np.unique(k)
        bounds = 2 * np.append(np.searchsorted(k, names), len(k))
        return {(c, None if s == 0 else s - 1): flat[bounds[j]:bounds[j + 1]]
                for j, (c, s) in enumerate(zip((names // span).tolist(), (names % span).tolist()))}

    def sram_peak_words(self) -> dict[int, int]:
        """chip -> the most words live at once."""
        peaks = {chip: int(steps[1::2].max()) for (chip, _), steps in self.sram_live(slices=False).items()}
        return dict(sorted(peaks.items()))


def describe(module: Module, target: Target) -> Facts:
    """The facts of an allocated (and possibly scheduled) machine-level module compiled for `target`."""
    # Modules are immutable, so the facts of the last few asked for are kept: a compile's auto partition
    # describes its two candidates (a quick list schedule of each), then schedules the chosen one. The
    # scheduled module (and the .lpu's, its constants' data hashed) is such a module rewritten: its facts
    # are taken over, in its order, and replace those it was made from.
    for facts in _recent:
        if facts.module is module and facts.target == target:
            return facts
    for k, facts in enumerate(_recent):
        if facts.target == target and (rewritten := _rewritten(facts, module)) is not None:
            _recent[k] = rewritten
            return rewritten
    _recent[:] = [_describe(module, target), *_recent[:_RECENT - 1]]
    return _recent[0]


_RECENT = 2
_recent: list[Facts] = []


def forget(keep: Module | None = None) -> None:
    """Keep no facts (but those of `keep`): a compile is done with its modules (the facts would keep
    them, and theirs, alive)."""
    _recent[:] = [facts for facts in _recent if facts.module is keep]


# What the facts do not depend on: the schedule (an instruction's cycle is read from its op, when asked)
# and a constant's data hash.
UNREAD_ATTRS = frozenset({"cycle", "unit", "streams", "sha256"})


def _rewritten(facts: Facts, module: Module) -> Facts | None:
    """The facts of `module` when it rewrites facts.module changing only UNREAD_ATTRS and the op order
    (ir.rewrite); else None. What _describe gives, at the cost of renumbering."""
    order = rewritten_from(facts.module, module, UNREAD_ATTRS)
    if order is None:
        return None
    if order == list(range(len(order))):  # (the .lpu's image: only constants changed) nothing to renumber
        return Facts(module, facts.target, facts.places, facts.words, facts.bases, tuple(
            ins if ins.op is module.ops[ins.index] else replace(ins, op=module.ops[ins.index])
            for ins in facts.instructions))
    # Bases in the new order of their ops; segments name them by their new numbers. A value's words name its
    # own base or those of its operands, defined before it: renumbered in the same pass. An instruction's reads
    # are the words of its operands, the same tuples: renumbered once, by identity (but an install's window:
    # its own words).
    base_of = {base.name: b for b, base in enumerate(facts.bases)}
    renumber, bases, words, renumbered = [0] * len(facts.bases), [], {}, {id(()): ()}
    old_words = facts.words
    for j, op in enumerate(module.ops):
        for r in op.results:
            b = base_of.get(r.name)
            if b is not None:
                renumber[b] = len(bases)
                base = facts.bases[b]
                bases.append(base if base.producer < 0 else
                             Base(base.name, base.chip, base.extents, j, base.state, base.alias))
            segs = old_words.get(r.name)
            if segs is not None:
                words[r.name] = renumbered[id(segs)] = tuple([(s, w, n, renumber[b]) for s, w, n, b in segs])
    by_index, instructions = facts.by_index, []
    for j, (op, i) in enumerate(zip(module.ops, order)):
        ins = by_index.get(i)
        if ins is not None:
            reads = tuple([renumbered.get(id(segs)) or tuple([(s, w, n, renumber[b]) for s, w, n, b in segs])
                           for segs in ins.reads])
            instructions.append(Instruction(j, op, ins.unit_class, ins.chip, reads, ins.writes,
                                            tuple([renumber[b] for b in ins.write_bases]), ins.cost,
                                            ins.fixed_unit, ins.links))
    return Facts(module, facts.target, places(module), words, tuple(bases), tuple(instructions))


_WORDS = itemgetter(2)  # an extent's words


def _describe(module: Module, target: Target) -> Facts:
    machine, lanes = target.machine, target.lanes
    where = places(module)
    segments: dict[str, tuple[Segment, ...]] = {}
    sent_by: dict[str, int] = {}  # a transfer -> the index of its send
    bases: list[Base] = []
    instructions: list[Instruction] = []
    starts: dict[str, list[int]] = {}  # per weight an install windows: its segments' extent_starts
    unit_cycles = UnitCycles(machine)
    in_sram: dict[tuple[str, int], list[int]] = {}  # (op name, operands) -> the positions of its SRAM operands
    # A stamped op (ir.pieces) is its template op's name, types and attributes but for its cycle, chip, unit,
    # streams and `out`: when it reads the words its template op reads (other values' words, in the same
    # places) and writes the same `out`, its facts are its template op's but for its chip and its values' bases
    # (a million instructions, a few thousand distinct). `template_of`: each op's template op's index (or None,
    # ir.pieces.stamped_from); `plain`: per template op whose stamps may take its facts so (no transfer, no state), its
    # Instruction, its operands' words, its SRAM operands' positions and whether it reads a window; `extents_of`:
    # an SRAM or view value's words as extents (its segments without their bases), one object for equal words,
    # to compare a stamp's with its template's by identity.
    template_of = stamped_from(module.pieces, len(module.ops))
    plain: dict[int, tuple] = {}
    in_template = set(chain.from_iterable(template_ops(module.pieces).values()))
    extents_of: dict[str, tuple] = {}
    interned: dict[tuple, tuple] = {}  # extents -> themselves: equal words, one object
    opdefs: dict[str, object] = {}  # op name -> its definition, once checked to be a machine instruction's
    for i, op in enumerate(module.ops):
        how = plain.get(template_of[i])
        if how is not None:  # a stamp of a template op: its facts, when it reads and writes that op's words
            t, words_of, positions, window = how
            operands = op.operands
            for v, w in zip(operands, words_of):
                if extents_of.get(v.name) is not w:
                    break
            else:
                attrs = op.attrs.as_dict()
                chip = attrs.get("chip", 0)
                o = attrs.get("out")
                to = t.op.attrs.get("out")
                if (not window or (where[operands[0].name] == SRAM and segments.get(operands[0].name))) \
                        and (o is to or o == to):
                    write_bases = []
                    for r, tr, ext in zip(op.results, t.op.results, t.writes):
                        b = len(bases)
                        write_bases.append(b)
                        bases.append(Base(r.name, chip, ext, i, False, False))
                        segments[r.name] = tuple([(s, first, n, b) for s, first, n in ext])
                        extents_of[r.name] = extents_of[tr.name]
                    if window:  # its template's window, in its own weight's words
                        b = segments[operands[0].name][0][3]
                        reads = (tuple([(s, first, n, b) for s, first, n, _ in t.reads[0]]),)
                    else:
                        reads = tuple([segments.get(operands[k].name, ()) for k in positions])
                    instructions.append(Instruction(i, op, t.unit_class, chip, reads, t.writes, tuple(write_bases),
                                                    t.cost))
                    continue
        opdef = opdefs.get(op.name)
        if opdef is None:
            if not mo.is_machine_op(op.name):
                raise LpucError(f"{op.label()}: {op.name} is not a machine instruction (not a scheduled program)")
            opdef = opdefs[op.name] = OPS[op.name]
        attrs = op.attrs.as_dict()
        chip = attrs.get("chip", 0)
        if opdef.view:
            segs = segments[op.result.name] = _view_words(op, segments, lanes)
            words_at = tuple([s[:3] for s in segs])
            extents_of[op.result.name] = interned.setdefault(words_at, words_at)
            continue
        writes, write_bases = [], []
        if opdef.result_place == SRAM:
            out, pos = tuple(attrs.get("out") or ()), 0
            for r in op.results:
                n = words(r.type, lanes)
                # (one result in all of `out`, as most: those very extents)
                whole = len(op.results) == 1 and sum(map(_WORDS, out)) == n and all(map(_WORDS, out))
                ext = out if whole else sub_extents(out, pos, n)
                pos += n
                extents_of[r.name] = interned.setdefault(ext, ext)
                b = len(bases)
                write_bases.append(b)
                bases.append(Base(r.name, chip, ext, i if opdef.unit else -1, opdef.persistent, opdef.in_place))
                segments[r.name] = tuple([(s, w, n, b) for s, w, n in ext])
                writes.append(ext)
        if opdef.unit is None:  # a constant (in the SRAM image) or a state: no instruction
            continue
        operands = op.operands
        positions = in_sram.get((op.name, len(operands)))
        if positions is None:  # (a million instructions, a few dozen kinds)
            positions = in_sram[op.name, len(operands)] = [k for k in range(len(operands))
                                                           if opdef.operand_place(k) == SRAM]
        reads = tuple([segments.get(operands[k].name, ()) for k in positions])
        window = mo.reads_window(op)
        if window:  # just its tile's words (the weight's starts found once, for all its tiles)
            w = op.operands[0]
            if w.name not in starts:
                starts[w.name] = extent_starts(reads[0])
            reads = (window_extents(w.type, reads[0], *mo.window(op.attrs, w.type), lanes, starts[w.name]),)
        if opdef.in_place:  # writes into its state, which it does not read (ir.costs.cost)
            reads = ((),) + reads[1:]
        # (cost reads the first three fields of a segment)
        c = cost(op, machine, reads, writes, unit_cycles(op))
        fixed, links = None, ()
        if opdef.result_place == LINK:  # a send: its route fixes its port and the links it holds
            route = attrs["route"]
            fixed = route[0]
            sent_by[op.result.name] = i
            try:
                hops = target.network.hops(chip, route)
            except LpucError:  # a port with no cable (the interpreter reports it): no link is held
                hops = []
            links = tuple((ch, port, off, length) for (ch, port), (_, off, length)
                          in zip(hops, link_windows(op, machine, c.occupancy)))
        elif LINK in opdef.places:  # a receive: on the port where its send's route arrives
            send = module.ops[sent_by[op.operands[opdef.places.index(LINK)].name]]
            try:
                fixed = target.network.destination(mo.chip_of(send), send.attrs["route"])[1]
            except LpucError:
                fixed = None
        ins = Instruction(i, op, opdef.unit, chip, reads, tuple(writes), tuple(write_bases), c, fixed, links)
        instructions.append(ins)
        if i in in_template and fixed is None and not links and not opdef.in_place and not opdef.persistent \
                and (not window or where[operands[0].name] == SRAM):  # (a window of a value: all one base's words)
            plain[i] = (ins, tuple([extents_of.get(v.name) for v in operands]), positions, window)
    return Facts(module, target, where, segments, tuple(bases), tuple(instructions))


def _view_words(op: Op, segments: Mapping[str, tuple[Segment, ...]], lanes: int) -> tuple[Segment, ...]:
    """The words a view names: the layout's rule, on extents whose "slice" is the index of the segment it
    came from (so each word finds its owner again)."""
    flat, per_operand = [], []
    for v in op.operands:
        segs = segments.get(v.name, ())
        per_operand.append(tuple((len(flat) + k, w, n) for k, (_, w, n, _) in enumerate(segs)))
        flat += segs
    ext = view_extents(op.name, op.attrs, [v.type for v in op.operands], per_operand, lanes)
    return tuple((flat[k][0], w, n, flat[k][3]) for k, w, n in ext)

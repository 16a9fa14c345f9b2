"""Pieces: ops that are a template's ops stamped elsewhere.

A model is one layer N times. The compiler schedules each distinct part of a layer on a chip once
(compiler.templates) and stamps it at every repeat; what it stamps is a piece. The ops of a piece are its
template's ops, in order, with
- every cycle moved by one offset,
- other chips and value names (each renamed: equal ones stay equal, distinct ones distinct),
- other units, stream registers and SRAM words (`out`), op by op (a chip's units, registers and words go to
  whatever overlaps there: a piece's neighbours in time decide which are free),
and nothing else different: op names, types and every other attribute are the template's. A Block records
its pieces (ir.core.Piece), so that what repeats is written, read and checked once: the text holds each
template once and each piece as a `stamp` statement (its Stamp), from which a reader makes the ops again.

A template's ops are those of its first piece; `find_pieces` keeps, of the groups it is offered, those that
are their template stamped (checked op by op), so a Block's pieces are always true.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .attributes import AttrDict, compare_value
from .core import Op, Piece, Stamp, Value
from .types import TensorType


@dataclass(frozen=True, slots=True)
class _Row:
    operands: tuple[int, ...]  # indices into Template.values
    results: tuple[int, ...]


class Template:
    """A template's ops, and the chips and values (operands and results) a stamp renames in them, in order of
    first mention."""

    def __init__(self, ops: Sequence[Op]):
        self.ops = tuple(ops)
        values: dict[str, int] = {}
        self.rows = tuple(_Row(tuple(values.setdefault(v.name, len(values)) for v in op.operands),
                               tuple(values.setdefault(r.name, len(values)) for r in op.results)) for op in self.ops)
        self.values = tuple(values)
        # per op, its operands' numbers and its results' (number, type): what a stamp renames
        self._renamed = tuple((row.operands, tuple(zip(row.results, (r.type for r in op.results))))
                              for row, op in zip(self.rows, self.ops))
        # per op, its attributes (a stamp's op's are a copy, with what the stamp changes set) and what a stamp
        # changes: its cycle and chip, whether it has a unit, stream registers and words
        self._attrs = tuple(op.attrs.as_dict() for op in self.ops)
        self._stamped = tuple((op.attrs.get("cycle"), op.attrs.get("chip"), "unit" in op.attrs, "streams" in op.attrs,
                               "out" in op.attrs) for op in self.ops)
        self.has_unit = tuple(unit for _, _, unit, _, _ in self._stamped)
        self.stream_counts = tuple(len(op.attrs.get("streams", ())) for op in self.ops)
        self.chips = tuple(dict.fromkeys(op.attrs["chip"] for op in self.ops if "chip" in op.attrs))
        # (ops of which some have a `chip` and some not, or no `cycle`: no stamp)
        self.stampable = all(("chip" in op.attrs) == bool(self.chips) and type(op.attrs.get("cycle")) is int
                             for op in self.ops)

    def stamp_of(self, ops: Sequence[Op]) -> Stamp | None:
        """How `ops` are this template stamped, or None when they are not (see the module's docstring)."""
        if len(ops) != len(self.ops) or not self.stampable:
            return None
        names: list[str | None] = [None] * len(self.values)
        chips: list[int | None] = [None] * len(self.chips)
        chip_of = {c: k for k, c in enumerate(self.chips)}
        units: list[str | None] = []
        streams: list[tuple[int, ...]] = []
        outs: list[tuple] = []
        moved = False  # an op's `out` is not its template op's
        offset = None
        for t, o, row in zip(self.ops, ops, self.rows):
            if not _alike(t, o):
                return None
            for vs, ks in ((o.operands, row.operands), (o.results, row.results)):
                for v, k in zip(vs, ks):
                    if not _same(names, k, v.name):
                        return None
            units.append(o.attrs.get("unit"))
            streams.append(o.attrs.get("streams", ()))
            outs.append(o.attrs.get("out", ()))
            for key, tv in t.attrs.items():
                if key not in STAMPED:  # (_alike: equal)
                    continue
                ov = o.attrs[key]
                if key == "cycle":
                    if type(ov) is not int or (offset is not None and ov - tv != offset):
                        return None
                    offset = ov - tv
                elif key == "chip":
                    if type(ov) is not int or not _same(chips, chip_of[tv], ov):
                        return None
                elif key == "unit":
                    if type(ov) is not str or ov.split() != [ov] or ov == "-":  # (the text's spelling of units)
                        return None
                elif key == "streams":
                    if type(ov) is not tuple or len(ov) != len(tv) or not all(type(s) is int for s in ov):
                        return None
                else:  # out
                    moved = moved or (ov is not tv and compare_value(ov) != compare_value(tv))
        if len(set(names)) != len(names) or len(set(chips)) != len(chips):  # renamings, not merges
            return None
        return Stamp(offset or 0, tuple(chips), tuple(names), tuple(units), tuple(streams),
                     tuple(outs) if moved else None)

    def stamp(self, stamp: Stamp, values: dict[str, Value], use: Callable[[str], Value],
              define: Callable[[str, TensorType], Value]) -> Iterator[Op]:
        """The ops of the piece `stamp` says, one at a time (a reader makes each when its turn in the block
        comes): operands found in `values` (else `use(name)`, which makes one or says what is wrong), results
        put there (a name there already: `define(name, type)`, which says so)."""
        names, chips, offset = stamp.values, dict(zip(self.chips, stamp.chips)), stamp.cycle
        units, streams, outs = stamp.units, stamp.streams, stamp.out
        get, name_of, trusted, new_value, holding = values.get, names.__getitem__, Op.trusted, Value.trusted, \
            AttrDict.holding
        for j, (t, attrs, (operands, results), (cycle, chip, unit, regs, out)) in enumerate(
                zip(self.ops, self._attrs, self._renamed, self._stamped)):
            d = attrs.copy()  # (its template op's, as is: keys in sorted order, the stamp's values set)
            d["cycle"] = cycle + offset
            if chip is not None:
                d["chip"] = chips[chip]
            if unit:
                d["unit"] = units[j]
            if regs:
                d["streams"] = streams[j]
            if out and outs is not None:
                d["out"] = outs[j]
            args = tuple(map(get, map(name_of, operands)))
            if not all(args):  # (an operand from outside `values`)
                args = tuple([get(name) or use(name) for name in map(name_of, operands)])
            made = []
            for k, ttype in results:
                name = names[k]
                made.append(define(name, ttype) if name in values else new_value(name, ttype))
                values[name] = made[-1]
            yield trusted(t.name, args, tuple(made), holding(d))

    def identity(self) -> Stamp:
        """The stamp of the template's own piece."""
        return Stamp(0, self.chips, self.values, tuple(op.attrs.get("unit") for op in self.ops),
                     tuple(op.attrs.get("streams", ()) for op in self.ops))


# The attributes a stamp gives each op its own of: no type or machine rule reads them, so the verifier checks a
# stamped op as its template's op again for these only.
STAMPED = ("chip", "cycle", "out", "streams", "unit")


def _alike(t: Op, o: Op) -> bool:
    """Whether `o` is `t` but for what a stamp changes (its value names aside): the same op name, operand and
    result types, and attributes other than STAMPED."""
    if o.name != t.name or len(o.operands) != len(t.operands) or len(o.results) != len(t.results) \
            or o.attrs.keys() != t.attrs.keys():
        return False
    for vs, ts in ((o.operands, t.operands), (o.results, t.results)):
        for v, tv in zip(vs, ts):
            if v.type != tv.type:
                return False
    for key, tv in t.attrs.items():
        if key not in STAMPED:
            ov = o.attrs[key]
            if ov is not tv and compare_value(ov) != compare_value(tv):
                return False
    return True


def _same(table: list, k: int, v) -> bool:
    """Whether renaming the template's k-th value (or chip) to v agrees with `table` (filling it in)."""
    have = table[k]
    if have is None:
        table[k] = v
        return True
    return have == v


def find_pieces(ops: Sequence[Op], groups: Sequence[Sequence[Sequence[int]]]) -> tuple[Piece, ...]:
    """The pieces among `groups`: per template, the op indices of each of its candidate pieces (each ascending;
    the one with the first op is the template). A candidate is kept when its ops are the template's stamped;
    a template with no other piece kept has none."""
    found: list[tuple[tuple[tuple[int, ...], Stamp], ...]] = []  # per template, its pieces' ops and stamps
    for group in groups:
        first, *rest = sorted(tuple(g) for g in group)
        template = Template([ops[i] for i in first])
        kept = [(g, stamp) for g in rest if (stamp := template.stamp_of([ops[i] for i in g])) is not None]
        n = len(first)
        missed = [g for g in set(rest) - {g for g, _ in kept} if len(g) == n]
        # an op that a candidate has otherwise than stamped (a send's route across a dragonfly, whose racks are no
        # translation of one another) is left out of them all: it is written as it is, the rest is still stamped
        keep = [j for j, i in enumerate(first) if all(_alike(ops[i], ops[g[j]]) for g in missed)]
        if 0 < len(keep) < n:
            first, rest = tuple(first[j] for j in keep), [tuple(g[j] for j in keep) if len(g) == n else g for g in rest]
            template = Template([ops[i] for i in first])
            kept = [(g, stamp) for g in rest if (stamp := template.stamp_of([ops[i] for i in g])) is not None]
        if kept:
            found.append(((first, template.identity()), *kept))
    found.sort(key=lambda pieces: pieces[0][0])  # templates numbered in the order of their first op
    return tuple(sorted((Piece(t, g, stamp) for t, group in enumerate(found) for g, stamp in group),
                        key=lambda p: p.ops[0]))


def template_ops(pieces: Sequence[Piece]) -> dict[int, tuple[int, ...]]:
    """Each template's ops (those of its first piece), by template, in the order of their first pieces."""
    first: dict[int, tuple[int, ...]] = {}
    for p in pieces:
        first.setdefault(p.template, p.ops)
    return first


def stamped_from(pieces: Sequence[Piece], n: int) -> list[int | None]:
    """Per op of a block of `n` ops: the index of the template op it stamps, when it is an op of a piece other than
    its template's own; else None."""
    of: list[int | None] = [None] * n
    first = template_ops(pieces)
    for piece in pieces:
        template = first[piece.template]
        if template is not piece.ops:
            for i, t in zip(piece.ops, template):
                of[i] = t
    return of


__all__ = ["STAMPED", "Stamp", "Template", "find_pieces", "stamped_from", "template_ops"]

"""How two executable schedules differ (`lpuc diff A.lpu B.lpu`), so a changed schedule can be explained
rather than only detected (as a different sha256).

`diff_programs` compares, causes first: the manifest (format, tool version, bindings), the compile
options, the machine description (which TOML keys), the module's attributes; then every instruction
(its placement: chip, cycle, unit, stream registers, SRAM `out` extents; or anything else about it);
then the SRAM image; and the consequences: the makespan, the busy cycles of each unit class on each
chip, the compiler's summary facts.

Instructions are matched by their result value names, which lowering makes deterministic; an op
without results by (op name, operand names, occurrence). The IR records no provenance (which graph op
an instruction was lowered from), so differences are grouped by the instruction's own op name
(`vxm.add: 12 moved`), not by model op.

`diff_outputs` runs both programs on the interpreter and compares their outputs bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.core import Op
from ..ir.machine_ops import chip_of
from ..ir.printer import format_attr

from .lpu import Program

PLACEMENT = ("chip", "cycle", "unit", "streams", "out")  # where and when: a change of only these is a move
SHOWN_ELSEWHERE = ("cycles", "machine")  # manifest keys reported as the makespan and the machine description
SHOWN_CHARS = 72  # a value longer than this (e.g. a long `out` list) is shortened in the report


class _Absent:
    """A setting or attribute one side does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


def _show(value: Any) -> str:
    """A value as the report prints it: IR attributes as the IR prints them, shortened when long."""
    if value is ABSENT or value is None:
        text = "(absent)" if value is ABSENT else "null"
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = format_attr(value)
        except TypeError:
            text = str(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def _plain(value: Any) -> Any:
    """A value as JSON holds it."""
    if value is ABSENT:
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return _show(value)


def _same(x: Any, y: Any) -> bool:
    """Equal as the IR prints them (where 1, 1.0 and true differ)."""
    if x is ABSENT or y is ABSENT:
        return x is y
    try:
        return format_attr(x) == format_attr(y)
    except TypeError:
        return x == y


# --- what differs ----------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """One setting that differs: `section` is manifest, option, machine, module or summary."""

    section: str
    key: str
    before: Any
    after: Any

    def line(self) -> str:
        if self.section == "machine" and self.key == "machine.toml":
            return "machine.toml differs (the same settings: only comments or layout)"
        return f"{self.section} {self.key}: {_show(self.before)} -> {_show(self.after)}"

    def facts(self) -> dict:
        return {"section": self.section, "key": self.key, "before": _plain(self.before), "after": _plain(self.after)}


@dataclass(frozen=True)
class InstructionChange:
    """One instruction placed differently in B than in A, otherwise changed, or present in only one.

    `fields` holds (field, before, after) for each field that differs; for an instruction in only one
    program, its placement there (the missing side ABSENT)."""

    name: str      # "%v12"; an op without results: "host.sync(%a, %b)#0"
    op: str
    chip: int
    status: str    # moved (only its placement differs), changed, added (only in B) or removed (only in A)
    fields: tuple[tuple[str, Any, Any], ...]
    order: tuple[int, int]  # (the first cycle at which it differs, its position in A or else B)

    def line(self) -> str:
        if self.status == "added":
            parts = ["added (only in B)"] + [f"{f} {_show(after)}" for f, _, after in self.fields]
        elif self.status == "removed":
            parts = ["removed (only in A)"] + [f"{f} {_show(before)}" for f, before, _ in self.fields]
        else:
            parts = [f"{f} {_show(before)} -> {_show(after)}" for f, before, after in self.fields]
        return f"instruction {self.name} ({self.op}, chip {self.chip}): {', '.join(parts)}"

    def facts(self) -> dict:
        return {"name": self.name, "op": self.op, "chip": self.chip, "status": self.status,
                "fields": {f: {"before": _plain(b), "after": _plain(a)} for f, b, a in self.fields}}


@dataclass(frozen=True)
class BusyDelta:
    """Busy cycles (summed occupancies) of one unit class on one chip, in A and in B."""

    chip: int
    unit: str
    before: int
    after: int

    def line(self) -> str:
        return f"chip {self.chip} {self.unit}: {self.before:,} -> {self.after:,} ({self.after - self.before:+,})"


@dataclass(frozen=True)
class ProgramDiff:
    a: str                                         # where A and B were loaded from
    b: str
    changes: tuple[Change, ...]                    # causes first; the compiler's summary facts last
    instructions: tuple[InstructionChange, ...]    # by the first cycle at which each differs
    image: tuple[tuple[int, int, int], ...]        # (chip, slice, word) of the SRAM image extents that differ
    cycles: tuple[int, int]                        # makespan of A and of B
    busy: tuple[BusyDelta, ...]                    # the unit classes whose busy cycles differ
    ops: tuple[int, int]                           # ops in A and in B

    @property
    def identical(self) -> bool:
        return not (self.changes or self.instructions or self.image) and self.cycles[0] == self.cycles[1]

    def first_difference(self) -> str:
        """One line naming the first thing that differs: a setting (manifest, option, machine), else the
        first instruction to differ in cycle order, else the SRAM image, the makespan, a summary fact."""
        causes = [c for c in self.changes if c.section != "summary"]
        if causes:
            return causes[0].line()
        if self.instructions:
            return self.instructions[0].line()
        if self.image:
            return self._image_line()
        if self.cycles[0] != self.cycles[1]:
            return self._cycles_line()
        if self.changes:
            return self.changes[0].line()
        return "no difference"

    def counts(self) -> Counter:
        return Counter(i.status for i in self.instructions)

    def by_op(self) -> dict[str, Counter]:
        """op name -> status -> instructions: where the differences are (there is no source-op provenance)."""
        groups: dict[str, Counter] = {}
        for i in self.instructions:
            groups.setdefault(i.op, Counter())[i.status] += 1
        return dict(sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))

    def _cycles_line(self) -> str:
        before, after = self.cycles
        return f"cycles: {before:,} -> {after:,} ({after - before:+,})"

    def _image_line(self) -> str:
        c, s, w = self.image[0]
        return f"SRAM image: {len(self.image)} extent(s) differ, the first at chip {c} slice {s} word {w}"

    def lines(self, limit: int = 10) -> list[str]:
        """The report: settings, makespan, busy cycles, instructions (the first `limit` listed), image."""
        out = [f"A: {self.a or '(in memory)'}", f"B: {self.b or '(in memory)'}"]
        if self.identical:
            return out + ["identical: the same manifest, options, machine, instructions and SRAM image"]
        settings = [c for c in self.changes if c.section != "summary"]
        if settings:
            out += ["settings:"] + [f"  {c.line()}" for c in settings]
        out.append(self._cycles_line())
        if self.busy:
            out += ["busy cycles (per chip and unit class):"] + [f"  {d.line()}" for d in self.busy]
        else:
            out.append("busy cycles: the same on every chip and unit class")
        counts = self.counts()
        out.append(f"instructions: {counts['moved']} moved, {counts['changed']} changed, {counts['added']} added, "
                   f"{counts['removed']} removed (of {self.ops[0]:,} ops in A, {self.ops[1]:,} in B; "
                   "matched by result name)")
        if self.instructions:
            out += _wrapped("  by op (the IR keeps no source-op provenance):",
                            [f"{op} " + ", ".join(f"{n} {status}" for status, n in sorted(c.items()))
                             for op, c in self.by_op().items()])
            out += [f"  {i.line()}" for i in self.instructions[:limit]]
            hidden = len(self.instructions) - limit
            if hidden > 0:
                out.append(f"  ... and {hidden:,} more (--limit N lists more)")
        if self.image:
            out.append(self._image_line())
        summary = [c for c in self.changes if c.section == "summary"]
        if summary:
            out += ["compiler summary:"] + [f"  {c.line()}" for c in summary]
        return out

    def facts(self, limit: int = 10) -> dict:
        """The diff as JSON data (instructions: counts, groups and the first `limit`)."""
        return {
            "a": self.a, "b": self.b, "identical": self.identical,
            "first_difference": None if self.identical else self.first_difference(),
            "changes": [c.facts() for c in self.changes],
            "cycles": {"before": self.cycles[0], "after": self.cycles[1], "delta": self.cycles[1] - self.cycles[0]},
            "busy_cycles": [{"chip": d.chip, "unit": d.unit, "before": d.before, "after": d.after,
                             "delta": d.after - d.before} for d in self.busy],
            "instructions": {"ops": list(self.ops), **{s: self.counts()[s] for s in
                                                      ("moved", "changed", "added", "removed")},
                             "by_op": {op: dict(c) for op, c in self.by_op().items()},
                             "listed": [i.facts() for i in self.instructions[:limit]]},
            "image_extents_differ": [list(k) for k in self.image],
        }


def _wrapped(head: str, items: list[str], width: int = 100) -> list[str]:
    """`head` then the items, separated by "; ", over as many lines as it takes (never inside an item)."""
    lines, line = [], head
    for k, item in enumerate(items):
        text = item + (";" if k < len(items) - 1 else "")
        if len(line) + 1 + len(text) > width and line.strip():
            lines.append(line)
            line = "   "
        line += " " + text
    return lines + [line]


# --- comparing ---------------------------------------------------------------------

def diff_programs(a: Program, b: Program) -> ProgramDiff:
    """Everything that differs between two executable schedules (nothing is run)."""
    return ProgramDiff(
        a=a.source, b=b.source,
        changes=tuple(_manifest_changes(a, b) + _machine_changes(a, b) + _module_changes(a, b)
                      + _summary_changes(a, b)),
        instructions=_instruction_changes(a, b),
        image=_image_changes(a, b),
        cycles=(a.cycles, b.cycles),
        busy=_busy_deltas(a, b),
        ops=(len(a.module.ops), len(b.module.ops)))


def _flat(table: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: {"latency": {"vxm": 8}} -> {"latency.vxm": 8}."""
    flat = {}
    for k, v in table.items():
        if isinstance(v, Mapping):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _differing(before: Mapping, after: Mapping) -> list[tuple[str, Any, Any]]:
    """(key, before, after) of each key of two flat mappings whose values differ, in the order of A's keys
    then B's new ones."""
    keys = list(before) + [k for k in after if k not in before]
    return [(k, before.get(k, ABSENT), after.get(k, ABSENT)) for k in keys
            if not _same(before.get(k, ABSENT), after.get(k, ABSENT))]


def _changed(section: str, before: Mapping, after: Mapping) -> list[Change]:
    return [Change(section, *d) for d in _differing(before, after)]


def _manifest_changes(a: Program, b: Program) -> list[Change]:
    def identity(p):
        return _flat({k: v for k, v in p.manifest.items() if k not in ("options", "summary", *SHOWN_ELSEWHERE)})
    return _changed("manifest", identity(a), identity(b)) + _changed("option", _flat(a.options), _flat(b.options))


def _summary_changes(a: Program, b: Program) -> list[Change]:
    return _changed("summary", _flat(a.manifest.get("summary", {})), _flat(b.manifest.get("summary", {})))


def _machine_changes(a: Program, b: Program) -> list[Change]:
    """The machine description's keys that differ (the name is one), or that only its text does."""
    if a.machine_text == b.machine_text:
        return []
    keys = _changed("machine", _flat(tomllib.loads(a.machine_text)), _flat(tomllib.loads(b.machine_text)))
    return keys or [Change("machine", "machine.toml", _digest(a.machine_text), _digest(b.machine_text))]


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _module_changes(a: Program, b: Program) -> list[Change]:
    """Module attributes (chips, machine), and which values the outputs are (the manifest has their types)."""
    def described(p):
        return {**p.module.attrs, **{f"output {name}": f"%{v.name}" for name, v in p.module.outputs}}
    return _changed("module", described(a), described(b))


def _keys(ops: tuple[Op, ...]) -> dict[str, tuple[int, Op]]:
    """name -> (program position, op): the first result's name, else op name, operands and occurrence."""
    keyed, seen = {}, Counter()
    for position, op in enumerate(ops):
        if op.results:
            key = f"%{op.results[0].name}"
        else:
            signature = f"{op.name}({', '.join(f'%{v.name}' for v in op.operands)})"
            key = f"{signature}#{seen[signature]}"
            seen[signature] += 1
        keyed[key] = (position, op)
    return keyed


def _fields(op: Op) -> dict[str, Any]:
    """Everything about an instruction that can differ, placement first."""
    fields = {"chip": chip_of(op)}
    fields.update((k, op.attrs.get(k, ABSENT)) for k in PLACEMENT[1:])
    fields.update({"op": op.name, "operands": " ".join(f"%{v.name}" for v in op.operands),
                   "results": ", ".join(f"%{r.name} : {r.type}" for r in op.results)})
    fields.update((k, v) for k, v in op.attrs.items() if k not in PLACEMENT)
    return fields


def _cycle(*ops: Op) -> int:
    """The earliest cycle of `ops` (-1: none is timed)."""
    cycles = [op.attrs["cycle"] for op in ops if isinstance(op.attrs.get("cycle"), int)]
    return min(cycles, default=-1)


def _placement(op: Op, side: int) -> tuple[tuple[str, Any, Any], ...]:
    """(field, before, after) of an instruction in only one program (side 0: A, 1: B)."""
    return tuple((f, *((v, ABSENT) if side == 0 else (ABSENT, v))) for f, v in _fields(op).items()
                 if f in PLACEMENT[1:] and v is not ABSENT)


def _instruction_changes(a: Program, b: Program) -> tuple[InstructionChange, ...]:
    ops_a, ops_b = _keys(a.module.ops), _keys(b.module.ops)
    changes = []
    for key, (position, op) in ops_a.items():
        if key not in ops_b:
            changes.append(InstructionChange(key, op.name, chip_of(op), "removed", _placement(op, 0),
                                             (_cycle(op), position)))
            continue
        other = ops_b[key][1]
        if op == other:
            continue
        differ = _differing(_fields(op), _fields(other))
        if not differ:  # equal as printed: the dataclasses differ only where printing cannot tell
            continue
        status = "moved" if all(f in PLACEMENT for f, _, _ in differ) else "changed"
        changes.append(InstructionChange(key, op.name, chip_of(op), status, tuple(differ),
                                         (_cycle(op, other), position)))
    for key, (position, op) in ops_b.items():
        if key not in ops_a:
            changes.append(InstructionChange(key, op.name, chip_of(op), "added", _placement(op, 1),
                                             (_cycle(op), len(ops_a) + position)))
    return tuple(sorted(changes, key=lambda c: c.order))


def _image_changes(a: Program, b: Program) -> tuple[tuple[int, int, int], ...]:
    """SRAM image extents present in one image only, or holding other bytes."""
    keys = sorted(set(a.image) | set(b.image))
    return tuple(k for k in keys if k not in a.image or k not in b.image
                 or not np.array_equal(a.image[k], b.image[k]))


def _busy_deltas(a: Program, b: Program) -> tuple[BusyDelta, ...]:
    """Busy cycles per unit class per chip, as `lpuc run` reports them (interpreter.schedule_stats)."""
    from .interpreter import schedule_stats

    def busy(p):
        return {(c.chip, unit): n for c in schedule_stats(p.module, p.target).chips
                for unit, n in c.class_busy.items()}
    before, after = busy(a), busy(b)
    return tuple(BusyDelta(chip, unit, before.get((chip, unit), 0), after.get((chip, unit), 0))
                 for chip, unit in sorted(set(before) | set(after))
                 if before.get((chip, unit), 0) != after.get((chip, unit), 0))


# --- outputs -------------------------------------------------------------------------

@dataclass(frozen=True)
class OutputDiff:
    """One output of A and B run on the same inputs."""

    name: str
    bitwise_identical: bool
    max_abs_diff: float   # inf when not comparable (another shape, or only one program has it)
    note: str = ""        # why not comparable

    def line(self) -> str:
        if self.bitwise_identical:
            return f"  {self.name}: bitwise identical"
        if self.note:
            return f"  {self.name}: {self.note}"
        return f"  {self.name}: differs, max |A - B| = {self.max_abs_diff:.3g}"

    def facts(self) -> dict:
        finite = math.isfinite(self.max_abs_diff)
        return {"name": self.name, "bitwise_identical": self.bitwise_identical,
                "max_abs_diff": self.max_abs_diff if finite else None, **({"note": self.note} if self.note else {})}


def diff_outputs(a: Program, b: Program, inputs: Mapping[str, np.ndarray]) -> tuple[OutputDiff, ...]:
    """Run both programs on the interpreter (every hazard checked) and compare each output."""
    from .interpreter import run

    out_a, out_b = run(a, inputs).outputs, run(b, inputs).outputs
    names = list(out_a) + [k for k in out_b if k not in out_a]
    return tuple(_compare(k, out_a.get(k), out_b.get(k)) for k in names)


def _compare(name: str, x: np.ndarray | None, y: np.ndarray | None) -> OutputDiff:
    if x is None or y is None:
        return OutputDiff(name, False, math.inf, f"only in {'A' if y is None else 'B'}")
    if x.shape != y.shape:
        return OutputDiff(name, False, math.inf, f"shape {list(x.shape)} in A, {list(y.shape)} in B")
    bitwise = x.dtype == y.dtype and x.tobytes() == y.tobytes()
    return OutputDiff(name, bitwise, 0.0 if bitwise else _max_abs_diff(x, y),
                      "" if x.dtype == y.dtype else f"dtype {x.dtype} in A, {y.dtype} in B")


def _max_abs_diff(x: np.ndarray, y: np.ndarray) -> float:
    """max |x - y| in float64; equal infinities and NaN against NaN count as equal, NaN against a number
    as infinitely far."""
    if x.size == 0:
        return 0.0
    x, y = x.astype(np.float64), y.astype(np.float64)
    with np.errstate(invalid="ignore"):
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        d = np.where(same, 0.0, np.abs(x - y))
    return float(np.where(np.isnan(d), math.inf, d).max())


def output_lines(outputs: tuple[OutputDiff, ...], inputs: str = "") -> list[str]:
    """The outputs part of the report."""
    same = all(o.bitwise_identical for o in outputs)
    head = f"outputs{f' on {inputs}' if inputs else ''}: " + ("all bitwise identical" if same else "differ")
    return [head] + [o.line() for o in outputs]

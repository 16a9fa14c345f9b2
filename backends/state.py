"""The persistent state of a generation: what lives in SRAM from one run of a program to the next.

A stateful program declares its buffers (`mem.state`: a name, a type, the words it is pinned to);
its one `mem.state_write` per buffer writes the step's rows in place at the step's position. Between
runs the interpreter keeps, per buffer, its words and which of its slots (rows of the second-to-last
axis) have been written since the generation began. Programs sharing a `State` (a prefill and its
decode step, compiled together) must keep each buffer at the same chip and words: the cache never
moves, as on the chip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Module
from ..ir.errors import LpucError


def step_positions(module: Module) -> int | None:
    """The positions one run of a stateful module takes (1: a decode step; a prefill's prompt length), from
    its position input (module attribute `position`); None for a module without state."""
    name = module.attrs.get("position")
    return None if name is None else next(v.type.numel for v in module.inputs if v.name == name)


@dataclass
class Buffer:
    chip: int
    extents: tuple[tuple[int, int, int], ...]
    type: str                    # the buffer's type, as the IR prints it
    words: np.ndarray | None     # uint8 [words, lanes] in the value's word order (None: timing-only runs)
    written: np.ndarray          # bool [slots]: the slot holds a row written in this generation


class State:
    """The persistent buffers of one generation, by name (empty: a new generation)."""

    def __init__(self):
        self.buffers: dict[str, Buffer] = {}

    def reset(self) -> None:
        """Start a new generation: every buffer zero, no slot written."""
        self.buffers.clear()

    def buffer(self, name: str, chip: int, extents, ttype, slots: int, lanes: int, numeric: bool,
               where: str) -> Buffer:
        """The buffer `name` as a program keeps it: made (zero, unwritten) on first use; later uses must
        keep it where it is."""
        extents = tuple(tuple(e) for e in extents)
        b = self.buffers.get(name)
        if b is None:
            n = sum(e[2] for e in extents)
            b = self.buffers[name] = Buffer(chip, extents, str(ttype), np.zeros((n, lanes), np.uint8) if numeric
                                            else None, np.zeros(slots, bool))
        elif (b.chip, b.extents, b.type) != (chip, extents, str(ttype)):
            raise LpucError(f"{where}: state {name!r} ({ttype}) lies on chip {chip} at {list(extents)[:2]}..., but "
                            f"the program that wrote it keeps it ({b.type}) on chip {b.chip} at "
                            f"{list(b.extents)[:2]}...: compile prefill and decode together (lpuc generate "
                            "--prefill) so they share the cache")
        if numeric and b.words is None:
            b.words = np.zeros((sum(e[2] for e in extents), lanes), np.uint8)
        return b

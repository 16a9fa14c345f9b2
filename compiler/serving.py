"""What a program's schedule says about serving it, beyond one run's latency: its pipeline stages, a bound
on its throughput with one sequence in flight per stage, and a physical lower bound on its cycles.

Stages: a layout's (`tp=T,pp=P`, compiler.partition: chips T at a time), else each chip that runs
instructions (a pipeline, one chip a stage). All figures come from the interpreter's statistics of the exact
schedule (backends.interpreter.Stats).
"""

from __future__ import annotations

from ..ir.layout import words
from ..ir.machine_ops import is_state

from .generate import step_tokens_per_s
from .partition import parse_layout


def stages(program, stats) -> list[list]:
    """The program's pipeline stages, in order: each the ChipStats of its chips that run instructions."""
    layout = program.manifest.get("summary", {}).get("partition", "")
    tp = parse_layout(layout).tp if layout.startswith(("tp=", "pp=")) else 1
    out: dict[int, list] = {}
    for c in stats.chips:
        if c.instructions:
            out.setdefault(c.chip // tp, []).append(c)
    return [out[k] for k in sorted(out)]


def pipelined(program, stats) -> dict | None:
    """A decode step served pipelined, batch 1 per sequence: up to one sequence in flight per stage, each
    with its own cache, the step's schedule replayed for each. Per user it stays one token per step; in all,
    at most clock x min(in flight / step, 1 / busiest), `busiest` the cycles of the busiest resource (a unit
    instance or a link direction) in one step: no replay can come more often than that resource frees up.
    In flight: the stages, or fewer when the chips holding the cache lack the SRAM for a copy per sequence
    beside their peak. An upper bound (a replay's holds may still collide before it), from the exact
    schedule's statistics. None for a program that is not a decode step."""
    if step_tokens_per_s(program) is None:
        return None
    count = len(stages(program, stats))
    chip_bytes, lanes = program.machine.sram.chip_bytes, program.machine.lanes
    cache: dict[int, int] = {}  # chip -> bytes of resident state
    for op in program.module.ops:
        if is_state(op.name):
            chip = op.attrs.get("chip", 0)
            cache[chip] = cache.get(chip, 0) + words(op.result.type, lanes) * lanes
    fits = min((1 + (chip_bytes - stats.chips[c].sram_peak_bytes) // b for c, b in cache.items() if b),
               default=count)
    in_flight = max(1, min(count, fits))
    busiest = max([*stats.busy.values(), *(link.busy for link in stats.links)])
    rate = program.machine.clock_mhz * 1e6 * min(in_flight / program.cycles, 1 / busiest)
    return {"stages": count, "in_flight": in_flight, "busiest_cycles": busiest,
            "aggregate_tokens_per_s": round(rate, 3)}


def physical_bound(program, stats) -> dict:
    """A lower bound on the cycles of one run from what the hardware must do for this program's instructions,
    whatever their schedule: at batch 1
    the stages run one after another, each as long as its busiest chip's MXM work (installing its weights,
    streaming the activations) over its planes, less what its planes may hold before its input arrives (one
    tile each); and each hand-off from a stage to the next crosses at least one link (a hop and the
    transfer's pipeline depth). `gap`: how far the schedule is above it."""
    machine, parts = program.machine, stages(program, stats)
    planes, tile = machine.units["mxm"].count, machine.mxm.rows
    work = sum(max(max(c.class_busy.get("mxm", 0) - planes * tile, 0) for c in chips) // planes for chips in parts)
    hops = (len(parts) - 1) * (machine.c2c.hop_latency_cycles + machine.units["tx"].latency)
    bound = max(work + hops, 1)
    return {"physical_bound_cycles": bound, "mxm_cycles": work, "hand_off_cycles": hops,
            "gap": round(program.cycles / bound - 1, 6)}


__all__ = ["physical_bound", "pipelined", "stages"]

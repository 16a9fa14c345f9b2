"""What a program's schedule says about serving it, beyond one run's latency: its pipeline stages, its
throughput with one sequence in flight per stage, and a physical lower bound on its cycles.

Stages: a layout's (`tp=T,pp=P`, compiler.partition: chips T at a time), else each chip that runs
instructions (a pipeline, one chip a stage). All figures come from the interpreter's statistics of the exact
schedule (backends.interpreter.Stats).
"""

from __future__ import annotations

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
    """A decode step served pipelined: as many sequences in flight as it has stages, each stage taking the
    next sequence once it is done with one. A stage's turn lasts from the first data it receives (from the
    stage before; stage 0: its first instruction) to its chips' last landing: what comes before that (the
    step's own inputs from the host) waits for nothing and overlaps the sequence before. Aggregate tokens/s =
    clock x min(stages / step, 1 / longest turn); per user it stays one token per step. None for a program
    that is not a decode step."""
    if step_tokens_per_s(program) is None:
        return None
    turns = []
    for k, chips in enumerate(stages(program, stats)):
        received = [c.first_receive for c in chips if c.first_receive is not None]
        start = min(received) if k and received else min(c.span[0] for c in chips)
        turns.append(max(c.span[1] for c in chips) - start)
    longest = max(turns)
    rate = program.machine.clock_mhz * 1e6 * min(len(turns) / program.cycles, 1 / longest)
    return {"stages": len(turns), "longest_stage_cycles": longest, "aggregate_tokens_per_s": round(rate, 3)}


def physical_bound(program, stats) -> dict:
    """A lower bound on the cycles of one run from what the hardware must do, whatever the schedule: at batch 1
    the stages run one after another, each as long as its busiest chip's MXM work (installing its weights,
    streaming the activations) over its planes, less what its planes may hold before its input arrives (one
    tile each); and each hand-off from a stage to the next crosses at least one link (a hop and the
    transfer's pipeline depth). `gap`: how far the schedule is above it."""
    machine = program.machine
    planes, tile = machine.units["mxm"].count, machine.mxm.rows
    work = sum(max(max(c.class_busy.get("mxm", 0) - planes * tile, 0) for c in chips) // planes
               for chips in stages(program, stats))
    hops = (len(stages(program, stats)) - 1) * (machine.c2c.hop_latency_cycles + machine.units["tx"].latency)
    bound = max(work + hops, 1)
    return {"physical_bound_cycles": bound, "mxm_cycles": work, "hand_off_cycles": hops,
            "gap": round(program.cycles / bound - 1, 6)}


__all__ = ["physical_bound", "pipelined", "stages"]

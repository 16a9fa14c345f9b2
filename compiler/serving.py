"""What a program's schedule says about serving it, beyond one run's latency: its pipeline stages, a bound
on its throughput with one sequence in flight per stage, and a physical lower bound on its cycles.

Stages: a layout's (`tp=T,pp=P`, compiler.partition: chips T at a time), else each chip that runs
instructions (a pipeline, one chip a stage). All figures come from the interpreter's statistics of the exact
schedule (backends.interpreter.Stats).
"""

from __future__ import annotations

import numpy as np

from ..ir.costs import cost
from ..ir.layout import words
from ..ir.machine_ops import chip_of, is_state, unit_class
from ..ir.registry import SRAM
from ..ir.schedule_facts import VIEW, places, view_bases

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


def physical_bound(program, stats, occupancy=None) -> dict:
    """A lower bound on the cycles of one run from what the hardware must do for this program's instructions,
    whatever their schedule. At batch 1 the stages run one after another. Each takes at least its busiest
    chip's MXM work (installing its weights, streaming the activations) over its planes, less what its planes
    may hold before its input arrives (one tile each); and at least each of its chips' MXM work with the
    exchanges on the way (`exchange_chains`). Each hand-off from a stage to the next crosses at least one link (a hop and the
    transfer's pipeline depth). `gap`: how far the schedule is above it. `occupancy`: the run's
    (backends.interpreter.Result.occupancy), else the instructions' costs without their SRAM ports."""
    machine, parts = program.machine, stages(program, stats)
    planes, tile = machine.units["mxm"].count, machine.mxm.rows
    chains = exchange_chains(program, [[c.chip for c in chips] for chips in parts], occupancy)
    work = exchanges = 0
    for chips in parts:
        mxm = max(max(c.class_busy.get("mxm", 0) - planes * tile, 0) for c in chips) // planes
        work += mxm
        exchanges += max(0, max(chains.get(c.chip, 0) for c in chips) - mxm)
    hops = (len(parts) - 1) * (machine.c2c.hop_latency_cycles + machine.units["tx"].latency)
    bound = max(work + exchanges + hops, 1)
    return {"physical_bound_cycles": bound, "mxm_cycles": work, "exchange_cycles": exchanges,
            "hand_off_cycles": hops, "gap": round(program.cycles / bound - 1, 6)}


def exchange_chains(program, stage_chips: list[list[int]], occupancy=None) -> dict[int, int]:
    """Per chip of a stage of several, a lower bound on the cycles its stage takes, from its MXM work and the
    exchanges between the stage's chips (a tensor-parallel stage's partial sums going out, the sums coming
    back).

    The chain of a chip: the transfers it receives from its own stage, each kept when the one kept before is
    among its ancestors (read after write). They cut the chip's MXM work (a matmul and its install) into
    phases: phase k is what the k-th transfer's arrival precedes and the (k+1)-th's send waits for (phase 0:
    from the stage's start). Its matmuls start no sooner than the shortest path of dependences from transfer
    k's landing (the activation's quantization, say), and its planes' work from then is all of the phase's but
    one install each (the `planes` longest: a plane holds one tile ahead); transfer k+1 lands no sooner than
    the shortest path of dependences from the end of a matmul of phase k (sends, hops, sums, receives: their
    latencies). Work in no such phase is left out, so the sum stays a bound. Occupancies: `occupancy` (op
    index -> cycles), else ir.costs without SRAM ports (which only lengthen them); latencies: the occupancy
    plus the instruction's pipeline depth and hops (ir.costs)."""
    module, machine = program.module, program.machine
    planes = machine.units["mxm"].count
    stage_of = {c: k for k, chips in enumerate(stage_chips) for c in chips}
    slot = {c: chips.index(c) for chips in stage_chips for c in chips}
    width = max((len(chips) for chips in stage_chips), default=0)
    if width < 2:
        return {}
    ops = module.ops
    bases, where = view_bases(module), places(module)
    producer: dict[str, int] = {}
    preds: dict[int, list[int]] = {}  # instruction -> its producers on its stage, read after write
    for i, op in enumerate(ops):
        if unit_class(op.name) is None:
            continue
        if chip_of(op) in stage_of:
            names = [b for v in op.operands
                     for b in (bases.get(v.name, ()) if where[v.name] in (SRAM, VIEW) else (v.name,))]
            preds[i] = [p for b in names if (p := producer.get(b)) is not None
                        and stage_of.get(chip_of(ops[p])) == stage_of[chip_of(op)]]
        for r in op.results:
            producer[r.name] = i
    order = sorted(preds)  # (scheduled: producers come first)
    occ, lat = {}, {}
    for i in order:
        c = cost(ops[i], machine)
        occ[i] = occupancy[i] if occupancy is not None else c.occupancy
        lat[i] = occ[i] + c.latency - c.occupancy  # (pipeline depth and hops)

    # per op and chip of its stage: the latest kept transfer of the chip's chain among its ancestors (0: none);
    # the chain is ordered by ancestry, so that is the largest over its producers
    # and the shortest path of dependences from that transfer's landing to the op's issue (every path from it
    # runs through ops it precedes as the latest)
    far = np.iinfo(np.int64).max // 4
    after = np.zeros((len(ops), width), np.int32)
    landed = np.full((len(ops), width), far, np.int64)
    chain: dict[int, list[int]] = {}  # chip -> its kept receives, in order
    for i in order:
        if preds[i]:
            after[i] = after[preds[i]].max(axis=0)
            landed[i] = np.min([np.where(after[p] == after[i], landed[p] + lat[p], far) for p in preds[i]], axis=0)
            c = chip_of(ops[i])
            if unit_class(ops[i].name) == "rx" and chip_of(ops[preds[i][0]]) != c:
                kept = chain.setdefault(c, [])
                if after[i, slot[c]] == len(kept):
                    kept.append(i)
                    after[i, slot[c]] = len(kept)
                    landed[i, slot[c]] = -lat[i]  # (its issue, lat before it lands)
    # ... and the earliest kept transfer among its descendants (or itself)
    never = np.iinfo(np.int32).max
    before = np.full((len(ops), width), never, np.int32)
    for c, kept in chain.items():
        for k, i in enumerate(kept, 1):
            before[i, slot[c]] = k
    for i in reversed(order):
        for p in preds[i]:
            np.minimum(before[p], before[i], out=before[p])
    phase = {}  # matmul -> its phase, when it lies between two consecutive transfers of its chip's chain
    for i in order:
        c = chip_of(ops[i])
        if ops[i].name == "mxm.matmul" and c in chain:
            a, b = int(after[i, slot[c]]), int(before[i, slot[c]])
            if b == a + 1 or (a == len(chain[c]) and b == never):
                phase[i] = a
    # per op and chip: the shortest path of dependences from the end of one of the chip's phased matmuls to the
    # op's issue
    reach = np.full((len(ops), width), far, np.int64)
    for i in order:
        if preds[i]:
            reach[i] = np.min([reach[p] + lat[p] for p in preds[i]], axis=0)
        if i in phase:
            reach[i, slot[chip_of(ops[i])]] = -occ[i]  # (its issue: occ before its end)
    out: dict[int, int] = {}
    for c, kept in chain.items():
        work = [0] * (len(kept) + 1)
        installs: list[list[int]] = [[] for _ in work]
        first = [far] * len(work)  # the shortest way from the phase's transfer landing to one of its matmuls
        for i, k in phase.items():
            if chip_of(ops[i]) == c:
                own = [occ[p] for p in preds[i] if ops[p].name == "mxm.install"]
                work[k] += occ[i] + sum(own)
                installs[k] += own
                first[k] = min(first[k], int(landed[i, slot[c]]) if k else 0)
        total = sum(max(w - sum(sorted(x, reverse=True)[:planes]), 0) // planes + (f if f < far else 0)
                    for w, x, f in zip(work, installs, first))
        for i in kept:
            gap = int(reach[i, slot[c]])
            total += (gap if gap < far // 2 else lat[preds[i][0]]) + lat[i]
        out[c] = total
    return out


__all__ = ["exchange_chains", "physical_bound", "pipelined", "stages"]

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
    stage_of = {c: k for k, chips in enumerate(stage_chips) for c in chips if len(chips) > 1}
    slot = {c: chips.index(c) for chips in stage_chips for c in chips}
    width = max((len(chips) for chips in stage_chips), default=0)
    if not stage_of:
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

    # Those instructions numbered 0..n-1 in program order (producers first), and their edges by level (1 + the
    # highest of their producers'): each pass below takes a level at a time, in numpy.
    order = sorted(preds)
    number = {i: k for k, i in enumerate(order)}
    n = len(order)
    occ, lat, level = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for k, i in enumerate(order):
        c = cost(ops[i], machine)
        occ[k] = occupancy[i] if occupancy is not None else c.occupancy
        lat[k] = occ[k] + c.latency - c.occupancy  # (pipeline depth and hops)
        if preds[i]:
            level[k] = 1 + max(level[number[p]] for p in preds[i])
    src = np.fromiter((number[p] for i in order for p in preds[i]), np.int64)
    dst = np.fromiter((number[i] for i in order for _ in preds[i]), np.int64)
    by_level = np.lexsort((dst, level[dst]))
    src, dst = src[by_level], dst[by_level]
    cuts = np.searchsorted(level[dst], np.arange(1, int(level.max(initial=0)) + 2))
    levels = [(src[a:b], dst[a:b], *np.unique(dst[a:b], return_index=True)) for a, b in zip(cuts[:-1], cuts[1:])]
    chip = [chip_of(ops[i]) for i in order]
    column = np.array([slot[c] for c in chip], np.int64)
    receives: dict[int, list[int]] = {}  # level -> its receives from a chip of their own stage
    for k, i in enumerate(order):
        if unit_class(ops[i].name) == "rx" and preds[i] and chip_of(ops[preds[i][0]]) != chip[k]:
            receives.setdefault(int(level[k]), []).append(k)

    # Per instruction and chip of its stage (a column): the latest kept transfer of the chip's chain among its
    # ancestors (0: none); the chain is ordered by ancestry, so that is the largest over its producers. A
    # transfer is a candidate once a matmul of the stage precedes it (not a flag or a table from the inputs,
    # which would keep the exchanges after it out of the chain).
    after = np.zeros((n, width), np.int32)
    matmul = np.array([ops[i].name == "mxm.matmul" for i in order])
    fed = matmul.copy()  # a matmul among its ancestors (or itself)
    chain: dict[int, list[int]] = {}  # chip -> its kept receives, in order
    for lv, (s_, _, heads, starts) in enumerate(levels, 1):
        after[heads] = np.maximum.reduceat(after[s_], starts, axis=0)
        fed[heads] |= np.logical_or.reduceat(fed[s_], starts)
        for k in receives.get(lv, ()):
            kept = chain.setdefault(chip[k], [])
            if fed[k] and after[k, column[k]] == len(kept):
                kept.append(k)
                after[k, column[k]] = len(kept)
    # ... and the earliest kept transfer among its descendants (or itself).
    never = np.iinfo(np.int32).max
    before = np.full((n, width), never, np.int32)
    for c, kept in chain.items():
        before[kept, slot[c]] = np.arange(1, len(kept) + 1)
    for s_, d_, _, _ in reversed(levels):
        np.minimum.at(before, s_, before[d_])
    # A matmul between two consecutive transfers of its chip's chain is in the phase of the first.
    phase: dict[int, int] = {}
    for k, i in enumerate(order):
        if ops[i].name == "mxm.matmul" and chip[k] in chain:
            a, b = int(after[k, column[k]]), int(before[k, column[k]])
            if b == a + 1 or (a == len(chain[chip[k]]) and b == never):
                phase[k] = a
    # The shortest path of dependences to each instruction's issue: from its latest kept transfer's landing
    # (every path from it runs through instructions it precedes as the latest), and from the end of one of
    # the chip's phased matmuls.
    far = np.iinfo(np.int64).max // 4
    landed = np.full((n, width), far, np.int64)
    reach = np.full((n, width), far, np.int64)
    kept_at = {k: slot[c] for c, kept in chain.items() for k in kept}
    phased: dict[int, list[int]] = {}
    for k in phase:
        phased.setdefault(int(level[k]), []).append(k)
    for lv, (s_, d_, heads, starts) in enumerate(levels, 1):
        step = lat[s_][:, None]
        landed[heads] = np.minimum.reduceat(np.where(after[s_] == after[d_], landed[s_] + step, far), starts, axis=0)
        reach[heads] = np.minimum.reduceat(reach[s_] + step, starts, axis=0)
        for k in receives.get(lv, ()):
            if k in kept_at:
                landed[k, kept_at[k]] = -lat[k]  # (its issue: lat before it lands)
        for k in phased.get(lv, ()):
            reach[k, column[k]] = -occ[k]  # (its issue: occ before its end)

    out: dict[int, int] = {}
    for c, kept in chain.items():
        j = slot[c]
        work = [0] * (len(kept) + 1)
        installs: list[list[int]] = [[] for _ in work]
        first = [far] * len(work)  # the shortest way from the phase's transfer landing to one of its matmuls
        for k, ph in phase.items():
            if chip[k] == c:
                own = [int(occ[number[p]]) for p in preds[order[k]] if ops[p].name == "mxm.install"]
                work[ph] += int(occ[k]) + sum(own)
                installs[ph] += own
                first[ph] = min(first[ph], int(landed[k, j]) if ph else 0)
        total = sum(max(w - sum(sorted(x, reverse=True)[:planes]), 0) // planes + (f if f < far else 0)
                    for w, x, f in zip(work, installs, first))
        for k in kept:
            gap = int(reach[k, j])
            total += (gap if gap < far // 2 else int(lat[number[preds[order[k]][0]]])) + int(lat[k])
        out[c] = total
    return out

__all__ = ["exchange_chains", "physical_bound", "pipelined", "stages"]

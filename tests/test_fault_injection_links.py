"""Fault injection on links: perturb valid many-chip programs by one change each and check the
interpreter reports the broken rule (docs/machine-ir.md rule 8), naming the instruction and the link.

  early_recv  a c2c.recv moved to the cycle before its transfer has arrived (c_send + lat_send, from
              ir.costs here);
  overlap     a c2c.send moved to start one cycle after another send on the same first link direction,
              inside that send's window [c, c + occ).

Every candidate of each family is tried (not a sample), on pipeline and tensor partitions and a layout."""

from __future__ import annotations

from functools import lru_cache

import pytest

from lpuc.backends.interpreter import find_hazards
from lpuc.backends.lpu import build_program
from lpuc.compiler.driver import load_model
from lpuc.compiler.pipeline import CompileOptions, compile_module
from lpuc.ir import machine_ops as mo
from lpuc.ir.attributes import AttrDict
from lpuc.ir.core import Op
from lpuc.ir.costs import cost
from lpuc.ir.machine import read_machine

from helpers import SAMPLES

MACHINE, MACHINE_TEXT = read_machine("tsp-v1")
PROGRAMS = [("llama_prefill", 4, "pipeline"), ("gpt2_decode", 2, "tensor"), ("mixtral_decode_op23", 8, "pipeline"),
            ("llama_decode", 4, "tp=2,pp=2")]  # a layout: its collectives (parts out and back) are transfers too


@lru_cache(maxsize=None)
def _compiled(name: str, chips: int, strategy: str):
    graph, _ = load_model(SAMPLES / f"{name}.onnx")
    by = {"layout": strategy} if strategy.startswith("tp=") else {"chips": chips, "partition": strategy}
    module, _ = compile_module(graph, MACHINE, CompileOptions(scheduler="list", **by))
    assert not find_hazards(build_program(module, MACHINE_TEXT))
    return module


def _moved(module, index: int, cycle: int):
    op = module.ops[index]
    ops = list(module.ops)
    ops[index] = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "cycle": cycle}))
    return module.replace(ops=tuple(ops))


def _sends(module):
    return {op.result.name: (i, op) for i, op in enumerate(module.ops) if op.name == "c2c.send"}


@pytest.mark.parametrize("name,chips,strategy", PROGRAMS)
def test_every_early_receive_is_reported(name, chips, strategy):
    module = _compiled(name, chips, strategy)
    sends = _sends(module)
    cases = 0
    for i, op in enumerate(module.ops):
        if op.name != "c2c.recv":
            continue
        send = sends[op.operands[0].name][1]
        arrival = send.attrs["cycle"] + cost(send, MACHINE).latency
        assert op.attrs["cycle"] >= arrival
        hazards = find_hazards(build_program(_moved(module, i, arrival - 1), MACHINE_TEXT))
        early = [h for h in hazards if h.kind == "link" and h.instruction == op.label()]
        assert early, f"{op.label()} moved to {arrival - 1}: {[str(h) for h in hazards]}"
        assert early[0].cycle == arrival - 1 and "before it arrives" in str(early[0])
        cases += 1
    assert cases >= 2


@pytest.mark.parametrize("name,chips,strategy", PROGRAMS)
def test_every_overlap_on_a_link_direction_is_reported(name, chips, strategy):
    module = _compiled(name, chips, strategy)
    by_link: dict[tuple[int, int], list[tuple[int, Op]]] = {}
    for i, op in _sends(module).values():
        by_link.setdefault((mo.chip_of(op), op.attrs["route"][0]), []).append((i, op))
    cases = 0
    for (chip, port), sends in sorted(by_link.items()):
        sends.sort(key=lambda s: s[1].attrs["cycle"])
        for (_, first), (j, second) in zip(sends, sends[1:]):
            start = first.attrs["cycle"]
            assert cost(first, MACHINE).occupancy > 1
            hazards = find_hazards(build_program(_moved(module, j, start + 1), MACHINE_TEXT))
            link = f"c{chip}.l{port}"
            hits = [h for h in hazards if h.kind == "link" and link in h.resource]
            assert hits, f"{second.label()} moved onto {link}: {[str(h) for h in hazards]}"
            assert any(first.label() in str(h) and second.label() in str(h) for h in hits), \
                [str(h) for h in hits]
            cases += 1
    assert cases >= 1

"""The interpreter on many chips (docs/machine-ir.md "Chips", rules 7 and 8):
per-chip SRAM, units, ports and streams; transfers over real routes of
ir.topology (one hop, two hops on a 16-chip dragonfly and on a ring of 4);
numbers across chips; per-chip and per-link stats; every broken chip or link
rule reported by kind, instruction, cycle and resource (fault injection on
valid hand-built programs); timing-only runs equal numeric ones; a .lpu
without weights runs timing-only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lpuc.backends.interpreter import KINDS, HazardError, find_hazards, run, schedule_stats
from lpuc.backends.lpu import _pack, _unpack, build_program, load_lpu, lpu_bytes, read_lpu, write_lpu
from lpuc.ir.attributes import AttrDict, Tensor
from lpuc.ir.core import Op, Value
from lpuc.ir.errors import LpucError, VerifyError
from lpuc.ir.machine import parse_machine
from lpuc.ir.target import Target
from lpuc.ir.topology import link_name, network

from helpers import PeakAllocated, assert_one_line_error, run_cli
from test_interpreter import MACHINE_TEXT, Sched, rng_array, s_val, with_attrs

RING_TEXT = MACHINE_TEXT.replace('name = "tsp-v1"', 'name = "ring-test"').split("[topology]")[0] + \
    '[topology]\nkind = "ring"\nmax_chips = 64\n\n[latency]' + MACHINE_TEXT.split("[latency]")[1]
WORDS = 16  # a f32 [2, 333]: 2 vector columns x 2 rows x 4 byte-planes
BYTES = WORDS * 320


class Chips(Sched):
    """Sched on `chips` chips: every op takes `chip`; `transfer` sends over the topology's own route."""

    def __init__(self, chips: int, machine_text: str = MACHINE_TEXT):
        super().__init__()
        self.chips, self.text = chips, machine_text
        self.machine = parse_machine(machine_text)
        self.net = network(self.machine, chips)

    def constant(self, array, res, out=None, dtype=None, chip=0):
        v = super().constant(array, res, out, dtype)
        op = self.ops[-1]
        self.ops[-1] = Op(op.name, op.operands, op.results, AttrDict({**op.attrs, "chip": chip}))
        return v

    def transfer(self, v, src: int, dst: int, res: str, out=None, send_cycle=None):
        """%res_t = c2c.send on `src`, %res = c2c.recv on `dst` as soon as it has arrived."""
        route = self.net.route(src, dst)
        _, port = self.net.destination(src, route)
        t = self.op("c2c.send", v, res=f"{res}_t", chip=src, route=route, unit=f"tx{route[0]}", cycle=send_cycle)
        return self.op("c2c.recv", t, res=res, chip=dst, unit=f"rx{port}", out=out)

    def module(self, name="t"):
        m = super().module(name)
        return m.replace(attrs=AttrDict({"machine": self.machine.name, "chips": self.chips}))

    def program(self, weights=True):
        return build_program(self.module(), self.text, weights=weights)


def round_trip(chips=2, src=0, dst=1, text=MACHINE_TEXT) -> Chips:
    """a = x + c0 on `src`; sent to `dst`, b = a * c1 there; sent back, z = b - a on `src`. The two
    constants, and a and its copy r, sit at the same slice and word of their chips."""
    s = Chips(chips, text)
    x = s.input("x", (2, 333))
    c0 = s.constant(rng_array((2, 333), 1), "c0", out=((9, 0, WORDS),), chip=src)
    c1 = s.constant(rng_array((2, 333), 2), "c1", out=((9, 0, WORDS),), chip=dst)
    hx = s.op("host.input", x, res="hx", name="x", chip=src)
    a = s.op("vxm.add", hx, c0, res="a", chip=src, out=((5, 0, WORDS),))
    r = s.transfer(a, src, dst, "r", out=((5, 0, WORDS),))  # a stays live on src: read again by z
    b = s.op("vxm.mul", r, c1, res="b", chip=dst)
    back = s.transfer(b, dst, src, "back")
    z = s.op("vxm.sub", back, a, res="z", chip=src)
    s.output("z", s.op("host.output", z, res="oz", name="z", chip=src))
    s.output("b", s.op("host.output", b, res="ob", name="b", chip=dst))
    return s


def expected(xv):
    a = xv + rng_array((2, 333), 1)
    b = a * rng_array((2, 333), 2)
    return {"b": b, "z": b - a}


XV = rng_array((2, 333), 7)


def check_numbers(s: Chips):
    result = run(s.program(), {"x": XV})
    assert result.hazards == ()
    for k, v in expected(XV).items():
        np.testing.assert_allclose(result.outputs[k], v, rtol=1e-6)
    return result


# --- numbers and stats ----------------------------------------------------------

def test_two_chips_round_trip_numbers_and_stats():
    s = round_trip()
    st = check_numbers(s).stats
    i = s.info
    assert st.cycles == s.land["ob"] and st.instructions == 10
    # per chip: host.input, a, send, recv, z, oz on chip 0; recv, b, send, ob on chip 1
    assert [(c.chip, c.instructions) for c in st.chips] == [(0, 6), (1, 4)]
    assert st.chips[1].class_busy["vxm"] == i["b"]["occ"]
    assert st.chips[1].class_utilization["vxm"] == pytest.approx(i["b"]["occ"] / (16 * st.cycles))
    assert set(st.chips[0].class_busy) == {"vxm", "mxm", "sxm", "mem", "host"}
    assert st.busy["c1.vxm0"] == i["b"]["occ"] and st.busy["c0.tx0"] == i["r_t"]["occ"]
    assert st.busy["c1.rx0"] == i["r"]["occ"] and "vxm0" not in st.busy
    assert st.class_utilization["vxm"] == pytest.approx(st.class_busy["vxm"] / (16 * 2 * st.cycles))
    # the links: one hop each way, a [2, 333] f32 each
    assert [(x.name, x.bytes, x.busy, x.transfers) for x in st.links] == \
        [("c0.l0", BYTES, i["r_t"]["occ"], 1), ("c1.l0", BYTES, i["back_t"]["occ"], 1)]
    assert st.transfer_bytes == 2 * BYTES
    # a serial schedule: while a transfer is in flight (send issue .. receive landing) nothing else runs
    assert st.link_wait_cycles == sum(s.land[r] - i[f"{r}_t"]["cycle"] for r in ("r", "back")) > 0
    # SRAM: chip 0 holds c0, hx, a, back and z at most; the peak is the fuller chip's
    assert st.sram_peak_bytes == max(c.sram_peak_bytes for c in st.chips) > 0
    assert schedule_stats(s.module(), Target(s.machine, s.chips)) == st
    assert s.program().cycles == st.cycles


def test_trace_names_the_chip():
    s = round_trip()
    trace = run(s.program(), {"x": XV}).trace
    by = {e.instruction: e for e in trace}
    assert by["%b = vxm.mul"].chip == 1 and by["%a = vxm.add"].chip == 0
    assert (by["%r_t = c2c.send"].unit, by["%r = c2c.recv"].unit) == ("tx0", "rx0")
    assert by["%r_t = c2c.send"].land == s.land["r_t"]
    assert list(trace) == sorted(trace, key=lambda e: (e.start, e.chip, e.unit, e.land, e.instruction))


def test_sram_is_per_chip():
    """The same slice and word on two chips hold two values: no hazard, each chip's own bytes."""
    s = round_trip()
    assert s.ops[0].attrs["out"] == s.ops[1].attrs["out"]  # c0, c1
    check_numbers(s)
    # the same program on one chip's SRAM would clobber: r lands on a's words while a is live
    single = s.module().replace(attrs=AttrDict({"machine": "tsp-v1", "chips": 2}))
    flat = single.replace(ops=tuple(Op(o.name, o.operands, o.results,
                                       AttrDict({k: v for k, v in o.attrs.items() if k != "chip"}))
                                    for o in single.ops))
    kinds = {h.kind for h in find_hazards(build_program(flat, MACHINE_TEXT, weights=False))}
    assert {"constant", "overwritten"} <= kinds


def test_three_chips_fan_out_and_in():
    s = Chips(3)
    x = s.input("x", (2, 333))
    hx = s.op("host.input", x, res="hx", name="x", chip=0)
    to1 = s.transfer(hx, 0, 1, "to1")
    to2 = s.transfer(hx, 0, 2, "to2")
    n1 = s.op("vxm.neg", to1, res="n1", chip=1)
    e2 = s.op("vxm.exp", to2, res="e2", chip=2)
    from2 = s.transfer(e2, 2, 1, "from2")
    y = s.op("vxm.add", n1, from2, res="y", chip=1)
    s.output("y", s.op("host.output", y, res="oy", name="y", chip=1))
    assert s.ops[1].attrs["route"] != s.ops[3].attrs["route"]  # chip 0 leaves by two ports
    result = run(s.program(), {"x": XV})
    assert result.hazards == ()
    np.testing.assert_allclose(result.outputs["y"], -XV + np.exp(XV), rtol=1e-6)
    st = result.stats
    assert [c.instructions for c in st.chips] == [3, 5, 3]
    assert [x.name for x in st.links] == ["c0.l0", "c0.l1", "c2.l1"] and st.transfer_bytes == 3 * BYTES


@pytest.mark.parametrize("text, chips, src, dst, route", [
    (MACHINE_TEXT, 16, 0, 9, (7, 0)),  # two nodes of 8: node 0's global link, then a local one in node 1
    (RING_TEXT, 4, 0, 2, (0, 0)),      # next, next
])
def test_two_hop_routes(text, chips, src, dst, route):
    s = round_trip(chips, src, dst, text)
    net = network(s.machine, chips)
    assert net.route(src, dst) == route
    st = check_numbers(s).stats
    m = s.machine
    send = s.info["r_t"]
    assert send["lat"] == send["occ"] + 2 * m.c2c.hop_latency_cycles + m.latency.c2c
    hops = net.hops(src, route)
    links = {x.name: x for x in st.links}
    for chip, port in hops:
        x = links[link_name(chip, port)]
        assert (x.bytes, x.busy, x.transfers) == (BYTES, send["occ"], 1)
    assert len(st.chips) == chips and st.chips[dst].instructions == 4
    assert st.transfer_bytes == 2 * BYTES  # each transfer once, whatever its hops


# --- fault injection: chips and links ---------------------------------------------

def hazards(module, text=MACHINE_TEXT):
    return find_hazards(build_program(module, text))


def reported(module, kind, cycle, instruction, resource, contains="", text=MACHINE_TEXT, only=False):
    """The hazard described is among those found (the only one, if `only`); a checked run raises the first."""
    program = build_program(module, text)
    found = find_hazards(program)
    match = [h for h in found if (h.kind, h.cycle, h.instruction, h.resource) == (kind, cycle, instruction, resource)]
    assert match, [f"{h.kind} {h.resource}: {h}" for h in found]
    assert contains in str(match[0]) and "\n" not in str(match[0]), str(match[0])
    assert kind in KINDS
    if only:
        assert len(found) == 1, [str(h) for h in found]
    inputs = {v.name: np.zeros(v.type.shape, v.type.dtype.numpy) for v in module.inputs}
    with pytest.raises(HazardError) as e:
        run(program, inputs)
    assert str(e.value) == str(found[0])
    # hazards never depend on the numbers: a numeric run finds the same
    assert [str(h) for h in run(program, inputs, check=False).hazards] == [str(h) for h in found]
    return match[0]


def into_chip_9():
    """Two transfers into chip 9 of a 16-chip dragonfly: A from chip 0 (hops c0.l7, c8.l0), B from chip 8
    (hop c8.l0); serial, hence legal."""
    s = Chips(16)
    x, y = s.input("x", (2, 333)), s.input("y", (2, 333))
    hx = s.op("host.input", x, res="hx", name="x", chip=0)
    hy = s.op("host.input", y, res="hy", name="y", chip=8)
    ra = s.transfer(hx, 0, 9, "ra")
    rb = s.transfer(hy, 8, 9, "rb")
    z = s.op("vxm.add", ra, rb, res="z", chip=9)
    s.output("z", s.op("host.output", z, res="oz", name="z", chip=9))
    return s


def test_two_sends_on_one_link_direction():
    s = into_chip_9()
    assert hazards(s.module()) == ()
    a = s.info["ra_t"]
    hop = s.machine.c2c.hop_latency_cycles
    start = a["cycle"] + hop + 3  # B's only hop now starts inside A's second hop on c8.l0
    m = with_attrs(s.module(), "rb_t", cycle=start)
    b_occ = s.info["rb_t"]["occ"]
    a_win = (a["cycle"] + hop, a["cycle"] + hop + a["occ"])
    assert a_win[0] < start < a_win[1]  # proof: the windows intersect (rule 8)
    h = reported(m, "link", start, "%rb_t = c2c.send", "c8.l0",
                 f"holds link c8.l0 during [{start}, {start + b_occ}) while %ra_t = c2c.send holds it "
                 f"during [{a_win[0]}, {a_win[1]})", only=True)
    assert h.kind == "link"


def test_two_sends_out_of_one_port():
    s = round_trip()
    first = s.info["r_t"]
    # a second send of a over the same port, issued while the first still streams out
    extra = s.op("c2c.send", s_val(s, "a"), res="dup", chip=0, route=(0,), unit="tx0",
                 cycle=first["cycle"] + 2, streams=(5,))
    s.op("c2c.recv", extra, res="dup_r", chip=1, unit="rx0", out=((20, 0, WORDS),), streams=(6,))
    s.output("dup", s.op("host.output", s_val(s, "dup_r"), res="odup", name="dup", chip=1))
    m = s.module()
    found = hazards(m)
    link = [h for h in found if h.kind == "link" and h.resource == "c0.l0"]
    unit = [h for h in found if h.kind == "unit" and h.resource == "chip 0 unit tx0"]
    assert link and unit and link[0].instruction == "%dup = c2c.send" and link[0].cycle == first["cycle"] + 2
    assert "while %r_t = c2c.send holds it" in str(link[0])


def test_receive_before_arrival():
    s = round_trip()
    arrival = s.land["r_t"]
    m = with_attrs(s.module(), "r", cycle=arrival - 5)
    reported(m, "link", arrival - 5, "%r = c2c.recv", "c0.l0",
             f"receives %r_t before it arrives (at cycle {arrival})", only=True)


def test_route_over_a_port_without_cable():
    s = round_trip()  # 2 chips of a node: port 0 is each chip's only cable
    m = with_attrs(s.module(), "r_t", route=(3,), unit="tx3")
    reported(m, "route", s.info["r_t"]["cycle"], "%r_t = c2c.send", "c0.l3",
             "sends over port 3 of chip 0, which has no cable there (a dragonfly of 2 chips)", only=True)


def test_route_ending_on_the_wrong_chip():
    s = round_trip(3)
    assert s.net.route(0, 1) == (0,) and s.net.destination(0, (1,))[0] == 2
    m = with_attrs(s.module(), "r_t", route=(1,), unit="tx1")
    reported(m, "route", s.info["r_t"]["cycle"], "%r_t = c2c.send", "c0.l1",
             "routes %r_t to chip 2, but its receive %r = c2c.recv is on chip 1", only=True)


def test_operand_read_from_another_chip():
    s = round_trip()
    m = with_attrs(s.module(), "z", chip=1)  # z on chip 1 reads back and a, on chip 0
    h = reported(m, "chip", s.info["z"]["cycle"], "%z = vxm.sub", "value %back",
                 "reads %back, which lives on chip 0, not on its chip 1")
    found = hazards(m)
    assert [(x.kind, x.instruction, x.resource) for x in found] == [
        ("chip", "%z = vxm.sub", "value %back"), ("chip", "%z = vxm.sub", "value %a"),
        ("chip", "%oz = host.output", "value %z")]
    assert h is not None


def test_view_mixing_chips():
    s = round_trip()
    head = s.view("mem.column_slice", s_val(s, "a"), "head", start=0, size=320, chip=0)
    s.view("mem.join", (head, s_val(s, "b")), "ab", chip=0)
    reported(s.module(), "chip", None, "%ab = mem.join", "value %b", "views %b, which lives on chip 1, from chip 0",
             only=True)


@pytest.mark.parametrize("result, change, kind, resource, text", [
    ("r", dict(unit="rx3"), "route", "chip 1 unit rx3", "receives %r_t on rx3, but it arrives on port 0 (rx0)"),
    ("r_t", dict(unit="tx5"), "route", "chip 0 unit tx5", "runs on tx5, but its route leaves through port 0 (tx0)"),
    ("b", dict(chip=2), "route", "chip 2", "is on chip 2, but the module has 2 chip(s) (0..1)"),
    ("b", dict(unit="vxm16"), "unit", "chip 1 unit vxm16", "which tsp-v1 does not have (vxm0..vxm15)"),
])
def test_units_and_chips_named_per_chip(result, change, kind, resource, text):
    s = round_trip()
    info = s.info[result]
    label = next(op.label() for op in s.ops if op.results and op.results[0].name == result)
    reported(with_attrs(s.module(), result, **change), kind, info["cycle"], label, resource, text)


def test_resources_are_per_chip():
    """Two instructions on one unit, streams and slice at once: legal on two chips, a hazard on one."""
    s = Chips(2)
    x = s.input("x", (2, 333))
    h0 = s.op("host.input", x, res="h0", name="x", chip=0, out=((1, 0, WORDS),))
    h1 = s.op("host.input", x, res="h1", name="x", chip=1, out=((1, 0, WORDS),), cycle=0)
    t = s.free
    n0 = s.op("vxm.neg", h0, res="n0", chip=0, cycle=t, out=((2, 0, WORDS),))
    n1 = s.op("vxm.neg", h1, res="n1", chip=1, cycle=t, out=((2, 0, WORDS),))
    for v in (n0, n1):
        s.output(v.name, s.op("host.output", v, res=f"o{v.name}", name=v.name, chip=int(v.name[1])))
    assert hazards(s.module()) == ()
    r = run(s.program(), {"x": XV})
    np.testing.assert_array_equal(r.outputs["n0"], -XV)
    np.testing.assert_array_equal(r.outputs["n1"], -XV)
    found = {(h.kind, h.resource) for h in hazards(with_attrs(s.module(), "n1", chip=0))}
    assert {("unit", "chip 0 unit vxm0"), ("read_port", "the read port of chip 0 slice 1"),
            ("write_port", "the write port of chip 0 slice 2"), ("stream", "chip 0 stream 0"),
            ("chip", "value %h1")} <= found


def test_a_chip_count_the_topology_lacks():
    m = round_trip().module()
    with pytest.raises(LpucError, match="module @t is for 9 chips, which a tsp-v1 dragonfly cannot have"):
        find_hazards(build_program(m.replace(attrs=AttrDict({"machine": "tsp-v1", "chips": 9})), MACHINE_TEXT))


def test_transfers_are_read_only_by_their_receive():
    s = round_trip()
    base = s.module()
    ops = list(base.ops)
    k = next(i for i, op in enumerate(ops) if op.results and op.results[0].name == "r")
    t = ops[k - 1].results[0]
    r = ops[k].results[0]
    again = Op("c2c.recv", (t,), (Value("r2", r.type),),
               AttrDict({**ops[k].attrs, "out": ((30, 0, WORDS),), "streams": (7,),
                         "cycle": ops[k].attrs["cycle"] + 100}))
    neg = Op("vxm.neg", (t,), (Value("bad", r.type),),
             AttrDict({"chip": 1, "cycle": ops[k].attrs["cycle"] + 200, "unit": "vxm9", "out": ((31, 0, WORDS),),
                       "streams": (8, 9)}))
    m = base.replace(ops=tuple(ops[:k + 1] + [again, neg] + ops[k + 1:]))
    # Where values live is declared in the registry: the verifier refuses such a module outright ...
    with pytest.raises(VerifyError, match="%bad = vxm.neg: operand %r_t must be in SRAM, but it is a transfer "
                                          r"in flight \(a c2c.send result\)"):
        build_program(m, MACHINE_TEXT)
    # ... and the interpreter, checking on its own, reports it in a program that skipped the verifier.
    found = {(h.kind, h.instruction): str(h) for h in find_hazards(unverified(base, m))}
    assert "which %r = c2c.recv already receives" in found["operand", "%r2 = c2c.recv"]
    assert "a transfer in flight: only its c2c.recv may read it" in found["operand", "%bad = vxm.neg"]
    # and a receive of something that is no transfer
    m = with_attrs(base, "r", chip=1)
    ops = list(m.ops)
    ops[k] = Op("c2c.recv", (s_val(s, "a"),), ops[k].results, ops[k].attrs)
    m = m.replace(ops=tuple(ops))
    with pytest.raises(VerifyError, match="operand %a must be a transfer in flight"):
        build_program(m, MACHINE_TEXT)
    found = find_hazards(unverified(base, m))
    assert any(h.kind == "operand" and "receives %a, which is not a transfer" in str(h) for h in found)


def unverified(valid, module):
    """`module` as a program, built around a valid one's without the verifier."""
    return dataclasses.replace(build_program(valid, MACHINE_TEXT), module=module)


# --- timing only ------------------------------------------------------------------

FAULTS = [
    ("valid", lambda m: m),
    ("early receive", lambda m: with_attrs(m, "r", cycle=10)),
    ("no cable", lambda m: with_attrs(m, "r_t", route=(3,))),
    ("wrong chip", lambda m: with_attrs(m, "z", chip=1)),
    ("unit", lambda m: with_attrs(m, "b", cycle=0)),
]


@pytest.mark.parametrize("name, fault", FAULTS, ids=[f[0] for f in FAULTS])
def test_timing_only_equals_a_numeric_run(name, fault):
    s = round_trip()
    program = build_program(fault(s.module()), MACHINE_TEXT)
    numeric = run(program, {"x": XV}, check=False)
    timing = run(program, check=False, timing_only=True)
    assert timing.outputs == {} and timing.stats == numeric.stats and timing.trace == numeric.trace
    assert [str(h) for h in timing.hazards] == [str(h) for h in numeric.hazards]
    assert (name == "valid") == (timing.hazards == ())


def test_sixty_four_chips_timing_only_stays_small():
    """No SRAM bytes without numerics, and per-chip bookkeeping only for chips in use."""
    s = Chips(64)
    x = s.input("x", (2, 333))
    v = s.op("host.input", x, res="h", name="x", chip=0)
    for k in range(63):
        v = s.transfer(v, k, k + 1, f"v{k}")
    s.output("y", s.op("host.output", v, res="o", name="y", chip=63))
    program = s.program(weights=False)
    with PeakAllocated() as peak:
        result = run(program, check=False, timing_only=True)
    hops = {h for k in range(63) for h in s.net.hops(k, s.net.route(k, k + 1))}
    assert result.hazards == () and len(result.stats.chips) == 64 and len(result.stats.links) == len(hops) > 63
    print(f"peak {peak.bytes / 2**20:.0f} MiB")
    assert peak.bytes < 1 << 30, peak.bytes  # a numeric run's SRAM alone would be 64 x 220 MiB


# --- the .lpu file ----------------------------------------------------------------

def test_lpu_round_trip_many_chips(tmp_path):
    s = round_trip()
    path = tmp_path / "m.lpu"
    write_lpu(path, s.module(), MACHINE_TEXT)
    program = read_lpu(path)
    assert sorted(program.image) == [(0, 9, 0), (1, 9, 0)] and program.weights
    r = run(path, {"x": XV})
    for k, v in expected(XV).items():
        np.testing.assert_allclose(r.outputs[k], v, rtol=1e-6)


def test_lpu_without_weights(tmp_path):
    s = round_trip()
    module = s.module()
    # a constant whose data was never read (e.g. ONNX external data): fine without weights
    ops = list(module.ops)
    c1 = ops[1]
    ops[1] = Op(c1.name, c1.operands, c1.results,
                AttrDict({**c1.attrs, "value": Tensor(c1.attrs["value"].type, "ext:model.bin:0:2664")}))
    module = module.replace(ops=tuple(ops))
    path = tmp_path / "m.lpu"
    write_lpu(path, module, MACHINE_TEXT, weights=False)
    assert lpu_bytes(module, MACHINE_TEXT, weights=False) == path.read_bytes()  # deterministic
    program = read_lpu(path)
    assert program.image == {} and program.manifest["weights"] is False and not program.weights
    assert [op.attrs["out"] for op in program.module.ops if op.name == "mem.constant"] == [((9, 0, WORDS),)] * 2
    with pytest.raises(LpucError) as e:
        run(path, {"x": XV})
    assert str(e.value) == (f"{path} was compiled without weights (lpuc compile --no-weights): "
                            "run it with --timing-only")
    timing = run(path, timing_only=True)
    assert timing.outputs == {} and timing.hazards == ()
    assert timing.stats == run(s.program(), {"x": XV}).stats
    # a manifest saying "no weights" over a non-empty image is refused
    parts = _unpack(lpu_bytes(s.module(), MACHINE_TEXT), "m.lpu")
    manifest = json.loads(parts["manifest.json"])
    manifest["weights"] = False
    with pytest.raises(LpucError, match="says it has no weights, but its SRAM image is not empty"):
        load_lpu(_pack({**parts, "manifest.json": json.dumps(manifest).encode()}), "m.lpu")


def test_without_weights_constants_with_data_are_not_stored():
    s = round_trip()
    assert build_program(s.module(), MACHINE_TEXT, weights=False).image == {}
    assert len(build_program(s.module(), MACHINE_TEXT).image) == 2


# --- lpuc run ---------------------------------------------------------------------

@pytest.fixture
def lpus(tmp_path):
    s = round_trip()
    full, bare = tmp_path / "full.lpu", tmp_path / "bare.lpu"
    write_lpu(full, s.module(), MACHINE_TEXT)
    write_lpu(bare, s.module(), MACHINE_TEXT, weights=False)
    return full, bare, run(s.program(), {"x": XV}).stats


def test_cli_timing_only(capsys, lpus, tmp_path):
    full, bare, stats = lpus
    code, out, err = run_cli(capsys, "run", bare)
    assert_one_line_error(code, err, str(bare), "compiled without weights", "--timing-only")
    code, out, err = run_cli(capsys, "run", bare, "--timing-only", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["timing_only"] is True and report["outputs"] == {} and report["cycles"] == stats.cycles
    assert report["chips"] == 2 and [c["instructions"] for c in report["per_chip"]] == [6, 4]
    assert [(x["link"], x["bytes"]) for x in report["links"]] == [("c0.l0", BYTES), ("c1.l0", BYTES)]
    assert report["link_wait_cycles"] == stats.link_wait_cycles and report["transfer_bytes"] == 2 * BYTES
    code, out, err = run_cli(capsys, "run", bare, "--timing-only")
    assert code == 0 and "timing only" in err
    lines = out.splitlines()
    for key in ("cycles", "chip 0", "chip 1", "links", "link wait"):
        assert any(line.split()[:len(key.split())] == key.split() for line in lines), (key, out)
    assert "c0.l0 5,120 B" in out and len(lines) <= 20
    code, out, err = run_cli(capsys, "run", bare, "--timing-only", "-o", tmp_path / "o.npz")
    assert_one_line_error(code, err, "--timing-only", "-o")


def test_cli_numeric_run_on_two_chips(capsys, lpus, tmp_path):
    full, _, stats = lpus
    code, out, err = run_cli(capsys, "run", full, "-o", tmp_path / "o.npz", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["timing_only"] is False and set(report["outputs"]) == {"b", "z"}
    assert report["cycles"] == stats.cycles and report["sram_peak_bytes"] == stats.sram_peak_bytes


def test_link_wait_counts_the_cycles_a_transfer_flies_with_every_other_unit_idle():
    """interpreter._link_wait against its definition, cycle by cycle, on random timings: transfers and units
    starting and ending together, the links' own units (tx, rx) not counted."""
    import random
    from lpuc.backends.interpreter import LINK_CLASSES, Timed, Transfer, _link_wait
    rng = random.Random(3)
    for _ in range(50):
        cls = [rng.choice(["vxm", "mxm", "tx", "rx", "mem"]) for _ in range(rng.randrange(0, 12))]
        cycle = [rng.randrange(0, 40) for _ in cls]
        occ = [rng.randrange(1, 6) for _ in cls]
        flights = [(a, a + rng.randrange(-2, 15)) for a in (rng.randrange(0, 40) for _ in range(rng.randrange(0, 5)))]
        transfers = [Transfer(a, b, 0, ()) for a, b in flights]
        timed = Timed([None] * len(cls), [0] * len(cls), [None] * len(cls), cls, cycle, occ)
        flying = {c for a, b in flights for c in range(a, max(a, b))}
        busy = {c for k, s, o in zip(cls, cycle, occ) if k not in LINK_CLASSES for c in range(s, s + o)}
        assert _link_wait(timed, transfers) == len(flying - busy)

"""The cycle-accurate interpreter: numbers against numpy on hand-scheduled
programs, stats, and every hazard of docs/machine-ir.md detected and named
(instruction, cycle, resource)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lpuc.backends.interpreter import KINDS, HazardError, find_hazards, run
from lpuc.backends.lpu import build_program
from lpuc.ir import machine_ops as mo
from lpuc.ir.attributes import AttrDict, Tensor
from lpuc.ir.core import Block, Module, Op, Value
from lpuc.ir.costs import cost
from lpuc.ir.errors import LpucError
from lpuc.ir.evaluator import EVAL
from lpuc.ir.layout import view_extents, window_extents, words
from lpuc.ir.machine import SHIPPED, parse_machine
from lpuc.ir.registry import OPS
from lpuc.ir.types import DType, TensorType

MACHINE_TEXT = (SHIPPED / "tsp-v1.toml").read_text()
M = parse_machine(MACHINE_TEXT)
LANES = M.lanes
F32 = DType.f32


class Sched:
    """Builds a scheduled machine module by hand. Unless told otherwise an
    instruction issues once everything before it has landed (a serial, hence
    legal, schedule), on unit <class>0, streams 0..n-1, and its results get
    fresh words in the next slice of a round robin."""

    def __init__(self, slices=(0, 1, 2, 3, 4, 5, 6, 7)):
        self.inputs, self.ops, self.outputs = [], [], []
        self.ext: dict[str, tuple] = {}     # SRAM value -> extents
        self.land: dict[str, int] = {}      # value -> landing cycle
        self.info: dict[str, dict] = {}     # result -> cycle, occ, lat, unit, out
        self.free = 0
        self.slices, self.turn = slices, 0
        self.next_word: dict[int, int] = {}

    def input(self, name, shape, dtype=F32) -> Value:
        v = Value(name, TensorType(tuple(shape), dtype))
        self.inputs.append(v)
        self.land[name] = 0
        return v

    def alloc(self, n, slice_=None):
        if slice_ is None:
            slice_ = self.slices[self.turn % len(self.slices)]
            self.turn += 1
        w = self.next_word.get(slice_, 0)
        self.next_word[slice_] = w + n
        return ((slice_, w, n),)

    def reserve(self, out):
        """Keep auto-allocation off explicitly placed words."""
        for s, w, n in out:
            self.next_word[s] = max(self.next_word.get(s, 0), w + n)

    def constant(self, array, res, out=None, dtype=None):
        t = Tensor.from_array(np.asarray(array), dtype)
        v = Value(res, t.type)
        out = out or self.alloc(words(t.type, LANES))
        self.reserve(out)
        self.ops.append(Op("mem.constant", (), (v,), AttrDict(dict(value=t, cycle=0, out=out))))
        self.ext[res], self.land[res] = out, 0
        return v

    def view(self, name, operand, res, **attrs):
        operands = operand if isinstance(operand, tuple) else (operand,)
        (t,) = OPS[name].result_types([v.type for v in operands], attrs)
        v = Value(res, t)
        self.ops.append(Op(name, operands, (v,), AttrDict(attrs)))
        self.ext[res] = view_extents(name, attrs, [o.type for o in operands], [self.ext[o.name] for o in operands],
                                     LANES)
        self.land[res] = max(self.land[o.name] for o in operands)
        return v

    def op(self, name, /, *operands, res, cycle=None, unit=None, out=None, streams=None, **attrs):
        cls = mo.unit_class(name)
        types = OPS[name].result_types([v.type for v in operands], attrs)
        names = res if isinstance(res, tuple) else (res,)
        results = tuple(Value(n, t) for n, t in zip(names, types, strict=True))
        sram_operands = [v for i, v in enumerate(operands)
                         if v.name in self.ext and not (name == "mxm.matmul" and i == 1)]
        sram_results = () if name in ("mxm.install", "host.output", "c2c.send") else results
        if out is None and sram_results:
            out = tuple(e for r in sram_results for e in self.alloc(words(r.type, LANES)))
        self.reserve(out or ())
        if cycle is None:
            cycle = max([self.free] + [self.land[v.name] for v in operands])
        unit = unit or f"{cls}0"
        if streams is None:
            streams = tuple(range(len(sram_operands) + len(sram_results)))
        full = dict(attrs, cycle=cycle, unit=unit, streams=streams)
        if out:
            full["out"] = out
        op = Op(name, operands, results, AttrDict(full))
        writes, pos = [], 0
        for r in sram_results:
            writes.append(_sub(out, pos, words(r.type, LANES)))
            pos += words(r.type, LANES)
        reads = [self.ext[v.name] for v in sram_operands]
        if mo.reads_window(op):  # an install reads just its window's words
            w = operands[0].type
            reads = [window_extents(w, reads[0], *mo.window(op.attrs, w), LANES)]
        c = cost(op, M, reads, writes)
        land = cycle + c.latency
        self.free = max(self.free, land)
        for r, ext in zip(sram_results, writes):
            self.ext[r.name] = ext
        for r in results:
            self.land[r.name] = land
            self.info[r.name] = dict(cycle=cycle, occ=c.occupancy, lat=c.latency, land=land, unit=unit, out=out)
        self.ops.append(op)
        return results[0] if len(results) == 1 else results

    def output(self, name, v):
        self.outputs.append((name, v))

    def module(self, name="t") -> Module:
        return Module(name, Block(self.inputs, self.ops, self.outputs), AttrDict({"machine": "tsp-v1"}))

    def program(self, options=None):
        return build_program(self.module(), MACHINE_TEXT, options)


def _sub(extents, offset, count):
    out, pos = [], 0
    for s, w, n in extents:
        lo, hi = max(offset, pos), min(offset + count, pos + n)
        if lo < hi:
            out.append((s, w + lo - pos, hi - lo))
        pos += n
    return tuple(out)


def with_attrs(module: Module, result: str, **attrs) -> Module:
    """The module with the attributes of the op defining %result changed (None removes one)."""
    ops = []
    for op in module.ops:
        if op.results and op.results[0].name == result:
            new = {k: v for k, v in {**op.attrs, **attrs}.items() if v is not None}
            op = Op(op.name, op.operands, op.results, AttrDict(new))
        ops.append(op)
    return module.replace(ops=tuple(ops))


def program_of(module):
    return build_program(module, MACHINE_TEXT)


def rng_array(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- numbers -------------------------------------------------------------------

def elementwise_program(width=333, rows=2):
    s = Sched()
    x = s.input("x", (rows, width))
    c = s.constant(rng_array((rows, width), 1), "c")
    hx = s.op("host.input", x, res="hx", name="x")
    a = s.op("vxm.add", hx, c, res="a")
    b = s.op("vxm.mul", a, hx, res="b")
    e = s.op("vxm.exp", b, res="e", unit="vxm5")
    o = s.op("host.output", e, res="o", name="y")
    s.output("y", o)
    return s


@pytest.mark.parametrize("width", [333, 700])
def test_elementwise_numbers(width):
    s = elementwise_program(width)
    x, c = rng_array((2, width), 2), rng_array((2, width), 1)
    result = run(s.program(), {"x": x})
    np.testing.assert_allclose(result.outputs["y"], np.exp((x + c) * x), rtol=1e-6)
    assert result.hazards == ()
    st = result.stats
    assert st.cycles == s.land["o"] and st.instructions == 5
    assert st.latency_us == pytest.approx(st.cycles / 900)
    assert st.busy["vxm5"] == s.info["e"]["occ"] and st.busy["vxm1"] == 0
    assert st.utilization["vxm0"] == pytest.approx((s.info["a"]["occ"] + s.info["b"]["occ"]) / st.cycles)
    assert st.class_busy["vxm"] == sum(s.info[r]["occ"] for r in "abe")
    assert st.class_utilization["vxm"] == pytest.approx(st.class_busy["vxm"] / (16 * st.cycles))
    # c lives all along; hx is read by b, so hx, a and c are live when b issues (b not yet landed)
    assert st.sram_peak_bytes == 3 * words(TensorType((2, width), F32), LANES) * 320
    assert [e.instruction for e in result.trace] == ["%hx = host.input", "%a = vxm.add", "%b = vxm.mul",
                                                     "%e = vxm.exp", "%o = host.output"]
    ev = result.trace[1]
    assert (ev.unit, ev.start, ev.end, ev.land) == ("vxm0", s.info["a"]["cycle"],
                                                    s.info["a"]["cycle"] + s.info["a"]["occ"], s.land["a"])


def test_multi_extent_values_spanning_slices():
    """Values split over several slices, read through views (join, column slice, reshape)."""
    s = Sched()
    x = s.input("x", (3, 700))  # 3 vector columns x 3 rows x 4 planes = 36 words
    hx = s.op("host.input", x, res="hx", name="x", out=((10, 0, 12), (11, 100, 12), (12, 7, 12)))
    y = s.op("vxm.neg", hx, res="y", out=((13, 0, 5), (14, 0, 31)))
    tail = s.view("mem.column_slice", y, "tail", start=320, size=380)        # columns 320..699
    head = s.view("mem.column_slice", hx, "head", start=0, size=320)
    joined = s.view("mem.join", (head, tail), "joined")                      # [3, 700]
    flat = s.view("mem.reshape_view", joined, "flat", shape=(1, 3, 700))
    z = s.op("vxm.mul", flat, flat, res="z", out=((20, 0, 18), (21, 0, 18)))
    r = s.op("vxm.reduce_sum", z, res="r", axes=(2,), keepdims=False)
    o1 = s.op("host.output", z, res="o1", name="z")
    o2 = s.op("host.output", r, res="o2", name="r")
    s.output("z", o1)
    s.output("r", o2)
    xv = rng_array((3, 700), 3)
    want = np.concatenate([xv[:, :320], -xv[:, 320:]], axis=1).reshape(1, 3, 700) ** 2
    out = run(s.program(), {"x": xv}).outputs
    np.testing.assert_allclose(out["z"], want, rtol=1e-6)
    np.testing.assert_allclose(out["r"], want.sum(axis=2), rtol=1e-5)


def test_row_slice_view():
    s = Sched()
    c = s.constant(rng_array((2, 5, 333), 4), "c", out=((3, 0, 40), (4, 0, 40)))
    rows = s.view("mem.row_slice", c, "rows", start=1, size=3)  # 2 batches x 2 vector columns: 4 runs of 3 rows
    n = s.op("vxm.neg", rows, res="n")
    s.output("n", s.op("host.output", n, res="o", name="n"))
    np.testing.assert_array_equal(run(s.program(), {}).outputs["n"], -rng_array((2, 5, 333), 4)[:, 1:4])


def test_mxm_sxm_mem_and_multi_result_ops():
    s = Sched()
    x = s.input("x", (4, 300))
    idx = s.input("idx", (3,), DType.i64)
    w = s.constant(rng_array((300, 320), 5), "w")
    acc = s.constant(rng_array((4, 320), 6), "acc", out=((30, 0, 4), (31, 0, 12)))
    table = s.constant(rng_array((7, 333), 7), "table")
    hx = s.op("host.input", x, res="hx", name="x")
    hi = s.op("host.input", idx, res="hi", name="idx")
    wt = s.op("mxm.install", w, res="wt", unit="mxm2")
    mm = s.op("mxm.matmul", hx, wt, acc, res="mm", unit="mxm2")
    tr = s.op("sxm.transpose", mm, res="tr", perm=(1, 0))                      # [320, 4]
    g = s.op("mem.gather", table, hi, res="g", axis=0)                         # [3, 333]
    top_v, top_i = s.op("vxm.topk", g, res=("tv", "ti"), k=2, axis=1, largest=True, sorted=True)
    parts = s.op("sxm.split", g, res=("p0", "p1"), axis=1, sizes=(320, 13))
    cast = s.op("vxm.cast", parts[1], res="cast", to=DType.i32)
    for name, v in (("tr", tr), ("tv", top_v), ("ti", top_i), ("cast", cast)):
        s.output(name, s.op("host.output", v, res=f"o_{name}", name=name))
    xv, iv = rng_array((4, 300), 8), np.array([6, 0, 3], np.int64)
    wv, av, tv = rng_array((300, 320), 5), rng_array((4, 320), 6), rng_array((7, 333), 7)
    out = run(s.program(), {"x": xv, "idx": iv}).outputs
    np.testing.assert_allclose(out["tr"], (xv @ wv + av).T, rtol=1e-5, atol=1e-5)
    gv = tv[iv]
    order = np.argsort(-gv, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(out["ti"], order)
    np.testing.assert_array_equal(out["tv"], np.take_along_axis(gv, order, axis=1))
    np.testing.assert_array_equal(out["cast"], gv[:, 320:].astype(np.int32))


def test_install_of_a_window():
    """x [3, 700] @ w [700, 333] in 3 x 2 tiles, each installed as a window of w (computed, in SRAM): the
    interpreter, the evaluator and numpy agree."""
    from lpuc.compiler.lower import evaluate_machine
    from lpuc.ir.verifier import verify
    s = Sched()
    hx = s.op("host.input", s.input("x", (3, 700)), res="hx", name="x")
    w = s.op("vxm.neg", s.op("host.input", s.input("w", (700, 333)), res="hw", name="w"), res="nw")
    parts = []
    for j, (n0, ns) in enumerate(((0, 320), (320, 13))):
        acc = None
        for i, (k0, ks) in enumerate(((0, 320), (320, 320), (640, 60))):
            x = s.view("mem.column_slice", hx, f"x{i}_{j}", start=k0, size=ks)
            tile = s.op("mxm.install", w, res=f"t{i}_{j}", start=(k0, n0), size=(ks, ns))
            acc = s.op("mxm.matmul", *(x, tile) + ((acc,) if acc is not None else ()), res=f"p{i}_{j}")
        parts.append(acc)
    s.output("y", s.op("host.output", s.view("mem.join", tuple(parts), "y"), res="o", name="y"))
    module = verify(s.module(), M)
    inputs = {"x": rng_array((3, 700), 1), "w": rng_array((700, 333), 2)}
    got = run(s.program(), inputs).outputs["y"]
    np.testing.assert_allclose(got, inputs["x"] @ -inputs["w"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got, evaluate_machine(module, inputs)["y"])


@pytest.mark.parametrize("slice_, hazards", [(61, []), (60, ["war"])])
def test_an_install_reads_only_its_window(slice_, hazards):
    """An install of w's first vector column reads only its words (slice 60): a write landing on w's
    second vector column (slice 61) while it streams is no hazard, one on the first is a write after read."""
    s = Sched()
    hx = s.op("host.input", s.input("x", (3, 320)), res="hx", name="x")
    hz = s.op("host.input", s.input("z", (3, 320)), res="hz", name="z")
    hw = s.op("host.input", s.input("w", (320, 640)), res="hw", name="w")
    w = s.op("vxm.neg", hw, res="nw", out=((60, 0, 1280), (61, 0, 1280)))
    tile = s.op("mxm.install", w, res="t", start=(0, 0), size=(320, 320))
    assert s.info["t"]["occ"] == 320 * 4  # a row per cycle per byte-plane of the tile, not of w
    s.op("vxm.neg", hz, res="q", cycle=s.info["t"]["cycle"] + 1, unit="vxm5", streams=(20, 21),
         out=((slice_, 0, 12),))
    assert s.land["q"] < s.info["t"]["cycle"] + s.info["t"]["occ"]  # lands while the install reads
    s.output("y", s.op("host.output", s.op("mxm.matmul", hx, tile, res="y"), res="o", name="y"))
    assert [h.kind for h in find_hazards(s.program())] == hazards


def test_every_machine_op_has_an_implementation():
    assert [n for n in mo.machine_ops() if n not in EVAL] == []


def test_inputs_are_validated():
    p = elementwise_program().program()
    for bad, msg in (({}, "missing input"), ({"x": np.zeros((2, 333), np.float32), "q": 1}, "unknown input"),
                     ({"x": np.zeros((2, 3), np.float32)}, "shape"), ({"x": np.zeros((2, 333))}, "dtype")):
        with pytest.raises(LpucError, match=msg) as e:
            run(p, bad)
        assert "\n" not in str(e.value)


def test_latency_comes_from_the_cost_table_not_the_program():
    """Attributes other than cycle/unit/out/streams are never read."""
    s = elementwise_program()
    m = s.module()
    assert run(program_of(m), {"x": rng_array((2, 333))}).stats.cycles == s.land["o"]


def test_ten_thousand_instructions_run_in_seconds():
    s = Sched()
    x = s.input("x", (2, 333))
    v = s.op("host.input", x, res="h", name="x")
    for i in range(10_000):
        v = s.op("vxm.add" if i % 2 else "vxm.mul", v, v, res=f"v{i}", unit=f"vxm{i % 16}",
                 out=s.alloc(16, 40 + i % 40) if s.next_word.get(40 + i % 40, 0) < 8000 else ((40 + i % 40, 0, 16),))
    s.output("y", s.op("host.output", v, res="o", name="y"))
    program = s.program()
    t0 = time.perf_counter()
    result = run(program, {"x": np.full((2, 333), 0.5, np.float32)})
    elapsed = time.perf_counter() - t0
    assert result.stats.instructions == 10_002 and elapsed < 10, elapsed


# --- hazards ------------------------------------------------------------------

def two_inputs():
    """x and y copied in (slices 1 and 2); everything after is free to schedule."""
    s = Sched()
    x, y = s.input("x", (2, 333)), s.input("y", (2, 333))
    s.op("host.input", x, res="hx", name="x", out=((1, 0, 16),))
    s.op("host.input", y, res="hy", name="y", out=((2, 0, 16),))
    return s


def only_hazard(module, kind, cycle, instruction, resource, contains="", also=()):
    """The module's first hazard is the one described; the others are of the kinds `also`."""
    program = program_of(module)
    found = find_hazards(program)
    assert len(found) == 1 + len(also) and sorted(h.kind for h in found[1:]) == sorted(also), \
        [str(h) for h in found]
    h = found[0]
    assert (h.kind, h.cycle, h.instruction, h.resource) == (kind, cycle, instruction, resource), str(h)
    assert str(h).startswith(f"hazard at cycle {cycle}: {instruction} ") and "\n" not in str(h)
    assert contains in str(h), str(h)
    inputs = {v.name: np.zeros(v.type.shape, v.type.dtype.numpy) for v in module.inputs}
    with pytest.raises(HazardError) as e:
        run(program, inputs)
    assert str(e.value) == str(h)
    return h


def parallel_pair(unit2="vxm1", second_reads="hy", out2=((4, 0, 16),), streams2=(2, 3), delay=1):
    s = two_inputs()
    t = s.free
    s.op("vxm.exp", s_val(s, "hx"), res="p1", cycle=t, unit="vxm0", out=((3, 0, 16),), streams=(0, 1))
    s.op("vxm.neg", s_val(s, second_reads), res="p2", cycle=t + delay, unit=unit2, out=out2, streams=streams2)
    for r in ("p1", "p2"):
        s.output(r, s.op("host.output", s_val(s, r), res=f"o_{r}", name=r))
    return s, t


def s_val(s, name):
    for op in s.ops:
        for r in op.results:
            if r.name == name:
                return r
    raise KeyError(name)


def test_a_legal_parallel_schedule_has_no_hazard():
    s, _ = parallel_pair()
    assert find_hazards(s.program()) == ()


def test_unit_held_twice():
    s, t = parallel_pair(unit2="vxm0")
    only_hazard(s.module(), "unit", t + 1, "%p2 = vxm.neg", "unit vxm0", "while %p1 = vxm.exp holds it")


def test_read_port_held_twice():
    s, t = parallel_pair(second_reads="hx")
    only_hazard(s.module(), "read_port", t + 1, "%p2 = vxm.neg", "the read port of slice 1")


def test_write_port_held_twice():
    s, t = parallel_pair(out2=((3, 16, 16),), delay=0)
    lat, n = s.info["p2"]["lat"], 16
    only_hazard(s.module(), "write_port", t + lat - n, "%p2 = vxm.neg", "the write port of slice 3")


def test_stream_held_twice():
    s, t = parallel_pair(streams2=(5, 1))
    only_hazard(s.module(), "stream", t + 1, "%p2 = vxm.neg", "stream 1")


def chain():
    """a = hx + hy; b = a * hx; the output of b."""
    s = two_inputs()
    a = s.op("vxm.add", s_val(s, "hx"), s_val(s, "hy"), res="a", out=((5, 0, 16),))
    b = s.op("vxm.mul", a, s_val(s, "hx"), res="b", out=((6, 0, 16),))
    s.output("b", s.op("host.output", b, res="o", name="b"))
    return s


def test_read_before_the_write_lands():
    s = two_inputs()
    a = s.op("vxm.add", s_val(s, "hx"), s_val(s, "hy"), res="a", out=((5, 0, 16),))
    early = s.land["a"] - 3
    b = s.op("vxm.neg", a, res="b", cycle=early, unit="vxm1", streams=(4, 5), out=((6, 0, 16),))
    s.output("b", s.op("host.output", b, res="o", name="b"))
    # a also lands while b (issued too early) still reads those words: a write-after-read too
    only_hazard(s.module(), "raw", early, "%b = vxm.neg", "slice 5 word 0",
                f"reads slice 5 word 0 before %a (landing at {s.land['a']}) is written", also=("war",))


def test_read_of_an_overwritten_operand():
    s = two_inputs()
    a = s.op("vxm.add", s_val(s, "hx"), s_val(s, "hy"), res="a", out=((5, 0, 16),))
    q = s.op("vxm.neg", s_val(s, "hy"), res="q", out=((5, 8, 16),))  # lands over a's words 8..15
    b = s.op("vxm.mul", a, s_val(s, "hx"), res="b", out=((6, 0, 16),))
    s.output("b", s.op("host.output", b, res="o", name="b"))
    s.output("q", s.op("host.output", q, res="oq", name="q"))
    only_hazard(s.module(), "overwritten", s.info["b"]["cycle"], "%b = vxm.mul", "slice 5 word 8",
                f"no longer holds %a: %q = vxm.neg landed there at {s.land['q']}")


def test_write_over_a_word_still_being_read():
    s = two_inputs()
    k = s.constant(rng_array((2, 333), 4), "k", out=((8, 0, 16),))
    a = s.op("vxm.add", s_val(s, "hx"), s_val(s, "hy"), res="a", out=((5, 0, 16),))
    b = s.op("vxm.mul", a, s_val(s, "hx"), res="b", out=((6, 0, 16),), cycle=s.land["a"] + 20)
    s.output("b", s.op("host.output", b, res="o", name="b"))
    tb, occ = s.info["b"]["cycle"], s.info["b"]["occ"]
    q = s.op("vxm.neg", k, res="q", unit="vxm3", out=((5, 0, 16),), streams=(7, 8))
    lat = s.info["q"]["lat"]
    s.output("q", s.op("host.output", q, res="oq", name="q"))
    m = with_attrs(s.module(), "q", cycle=tb + 5 - lat)  # lands at tb + 5 < tb + occ
    assert occ > 5
    only_hazard(m, "war", tb + 5, "%q = vxm.neg", "slice 5 word 0",
                f"while %b = vxm.mul still reads it (until {tb + occ})")


@pytest.mark.parametrize("out, word", [(((88, 0, 16),), "slice 88 word 0"), (((7, 8180, 16),), "slice 7 word 8180")])
def test_out_of_bounds(out, word):
    s = chain()
    m = with_attrs(s.module(), "b", out=out)
    h = [h for h in find_hazards(program_of(m)) if h.kind == "bounds"]
    assert len(h) == 1 and h[0].resource == word and h[0].cycle == s.info["b"]["cycle"]
    assert "outside SRAM (88 slices x 8192 words)" in str(h[0])


def mxm_program(install_unit="mxm0", matmul_unit="mxm0", second_install_at=None):
    s = Sched()
    x = s.input("x", (2, 320))
    w = s.constant(rng_array((320, 320), 1), "w")
    w2 = s.constant(rng_array((320, 320), 2), "w2")
    hx = s.op("host.input", x, res="hx", name="x")
    wt = s.op("mxm.install", w, res="wt", unit=install_unit)
    if second_install_at == "before":
        s.op("mxm.install", w2, res="wt2", unit="mxm0", streams=(3,))
    mm = s.op("mxm.matmul", hx, wt, res="mm", unit=matmul_unit)
    s.output("y", s.op("host.output", mm, res="o", name="y"))
    return s


def test_matmul_numbers_and_plane_checks():
    s = mxm_program()
    xv = rng_array((2, 320), 3)
    np.testing.assert_allclose(run(s.program(), {"x": xv}).outputs["y"], xv @ rng_array((320, 320), 1),
                               rtol=1e-5, atol=1e-5)


def test_matmul_on_another_plane():
    s = mxm_program(matmul_unit="mxm1")
    only_hazard(s.module(), "plane", s.info["mm"]["cycle"], "%mm = mxm.matmul", "plane mxm1",
                "its weights %wt are installed on mxm0")


def test_matmul_after_another_install_replaced_the_weights():
    s = mxm_program(second_install_at="before")
    only_hazard(s.module(), "plane", s.info["mm"]["cycle"], "%mm = mxm.matmul", "plane mxm0",
                "which holds %wt2")


def test_matmul_before_its_weights_are_installed():
    s = mxm_program()
    early = s.land["wt"] - 1
    m = with_attrs(s.module(), "mm", cycle=early)
    h = [h for h in find_hazards(program_of(m)) if h.kind == "plane"]
    assert len(h) == 1 and h[0].cycle == early and h[0].instruction == "%mm = mxm.matmul"
    assert f"before its weights %wt (landing at {s.land['wt']}) are installed" in str(h[0])


def test_outputs_come_from_host_output():
    s = two_inputs()
    s.output("y", s_val(s, "hy"))
    (h,) = find_hazards(program_of(s.module()))
    assert h.kind == "output" and h.cycle is None and str(h).startswith("hazard: output 'y' is %hy")


def test_install_landing_while_a_matmul_streams():
    s = mxm_program()
    s.op("mxm.install", s_val(s, "w2"), res="wt2", unit="mxm0", streams=(5,))
    info, lat2 = s.info["mm"], s.info["wt2"]["lat"]
    # issued after the matmul's occupancy (the unit is free) ... cannot land early; so issue it *before*
    # the matmul, on the unit's free cycles, landing inside the matmul's stream
    m = with_attrs(s.module(), "wt2", cycle=info["cycle"] + 1 - lat2)
    found = [h for h in find_hazards(program_of(m)) if h.kind == "plane"]
    assert found and found[0].instruction == "%mm = mxm.matmul" and found[0].resource == "plane mxm0"


def test_structural_hazards():
    s = chain()
    base = s.module()
    cases = [
        (with_attrs(base, "b", unit="sxm0"), "unit_class", "unit sxm0", "not a vxm unit"),
        (with_attrs(base, "b", unit="vxm16"), "unit", "unit vxm16", "does not have (vxm0..vxm15)"),
        (with_attrs(base, "b", streams=(0, 1)), "streams", "streams", "needs 3"),
        (with_attrs(base, "b", streams=(0, 1, -1)), "streams", "stream -1", "which tsp-v1 does not have (0..63)"),
        (with_attrs(base, "b", out=((6, 0, 15),)), "out", "out", "spanning 15 words, its results take 16"),
        (with_attrs(base, "b", cycle=None), "schedule", "cycle", "has no `cycle`"),
    ]
    for m, kind, resource, text in cases:
        found = [h for h in find_hazards(program_of(m)) if h.kind == kind]
        assert len(found) == 1, (kind, [str(h) for h in find_hazards(program_of(m))])
        assert found[0].instruction == "%b = vxm.mul" and found[0].resource == resource and text in str(found[0])


def test_constants_are_never_overwritten():
    s = Sched()
    x = s.input("x", (2, 333))
    c = s.constant(rng_array((2, 333), 1), "c", out=((9, 0, 16),))
    hx = s.op("host.input", x, res="hx", name="x")
    a = s.op("vxm.add", hx, c, res="a", out=((9, 0, 16),))  # reuses c's words after c's last read
    s.output("a", s.op("host.output", a, res="o", name="a"))
    only_hazard(s.module(), "constant", s.land["a"], "%a = vxm.add", "slice 9 word 0", "constant %c")


def test_constants_do_not_overlap():
    s = Sched()
    x = s.input("x", (2, 333))
    s.constant(rng_array((2, 333), 1), "c", out=((9, 0, 16),))
    s.constant(rng_array((2, 333), 2), "d", out=((9, 8, 16),))
    only_hazard(s.module(), "constant", 0, "%d = mem.constant", "slice 9 word 8", "a word of the constant %c")


def test_collect_all_hazards_in_cycle_order():
    s, t = parallel_pair(unit2="vxm0", second_reads="hx", streams2=(1, 2))
    result = run(s.program(), {"x": rng_array((2, 333)), "y": rng_array((2, 333))}, check=False)
    kinds = {h.kind for h in result.hazards}
    assert {"unit", "read_port", "stream"} <= kinds
    assert [h.cycle for h in result.hazards] == sorted(h.cycle for h in result.hazards)
    assert set(KINDS) >= kinds


def test_a_graph_op_is_not_a_program():
    s = Sched()
    x = s.input("x", (2,))
    r = Value("r", TensorType((2,), F32))
    m = Module("t", Block((x,), (Op("graph.neg", (x,), (r,)),), (("r", r),)), AttrDict({"machine": "tsp-v1"}))
    with pytest.raises(LpucError, match="not a machine instruction"):
        run(program_of(m), {"x": np.zeros(2, np.float32)})

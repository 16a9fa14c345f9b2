"""Machine descriptions: the shipped tsp-v1 carries the published figures, and
malformed files get one-line errors naming the key."""

import dataclasses
import re
from pathlib import Path

import pytest

from lpuc.ir import LpucError
from lpuc.ir.machine import _SECTIONS, RANGES, SHIPPED, Machine, load_machine, parse_machine
from lpuc.ir.machine_ops import UNIT_CLASSES

TSP = (SHIPPED / "tsp-v1.toml").read_text()


def test_tsp_v1_published_figures():
    m = load_machine("tsp-v1")
    assert m.clock_mhz == 900
    assert m.vector.lanes == 320
    assert m.sram.slices == 88 and m.sram.slice_bytes == 2.5 * 2**20 and m.sram.chip_bytes == 220 * 2**20
    assert (m.streams.east, m.streams.west) == (32, 32)
    assert (m.mxm.planes, m.mxm.rows, m.mxm.cols, m.mxm.fp16_rate) == (4, 320, 320, 0.25)
    assert m.vxm.alus_per_lane * m.vector.lanes == 5120
    assert m.c2c.links == 16 and abs(m.c2c.bytes_per_cycle * m.clock_mhz * 1e6 - 14e9) < 0.1e9
    assert (m.topology.chips_per_node, m.topology.local_links, m.topology.global_links) == (8, 7, 4)
    assert m.topology.max_chips == 10440
    assert m.cycles_to_us(900) == 1.0


def test_units_come_from_the_description():
    """Each unit class's count and latency is one lookup on the machine, from its own section."""
    m = load_machine("tsp-v1")
    assert {cls: (u.count, u.latency) for cls, u in m.units.items()} == {
        "mxm": (4, 24), "vxm": (16, 8), "sxm": (2, 12), "mem": (2, 4), "host": (1, 100), "tx": (16, 4), "rx": (16, 4)}
    other = parse_machine(TSP.replace("planes = 4", "planes = 2").replace("mxm = 24", "mxm = 30"))
    assert (other.units["mxm"].count, other.units["mxm"].latency) == (2, 30)
    assert list(m.units) == [c.name for c in UNIT_CLASSES]  # every class the registry declares, in its order


def test_vector_width_from_the_description():
    m = load_machine(Path(__file__).parent / "machines" / "narrow-160.toml")
    assert m.lanes == m.sram.word_bytes == m.mxm.rows == m.mxm.cols == 160
    assert load_machine("tsp-v1").lanes == 320


def test_assumed_figures_are_marked():
    for key in ("units = 2", "hop_latency_cycles", "transcendental_cycles", "bytes_per_cycle = 17.8"):
        line = next(line for line in TSP.splitlines() if line.startswith(key))
        assert "ASSUMED" in line, line
    assert "ASSUMED" in TSP.split("[latency]")[1].splitlines()[1]


def test_machine_file_by_path(tmp_path: Path):
    path = tmp_path / "small.toml"
    path.write_text(TSP.replace('name = "tsp-v1"', 'name = "small"').replace("slices = 88", "slices = 4"))
    m = load_machine(path)
    assert m.name == "small" and m.sram.slices == 4


@pytest.mark.parametrize("edit, message", [
    (("slices = 88", "slices = -1"), r"sram.slices must be an integer from 1 to 1,024 \(tsp-v1: 88\), got -1"),
    (("slices = 88", 'slices = "many"'), "sram.slices must be an integer from 1 to 1,024"),
    (("[sxm]", "[sxm]\nfoo = 1"), "unknown key sxm.foo"),
    (("clock_mhz = 900", ""), "missing key clock_mhz"),
    (('kind = "dragonfly"', 'kind = "mesh"'), "topology.kind must be one of"),
    (("word_bytes = 320", "word_bytes = 256"), r"sram.word_bytes must equal vector.lanes \(320\).*got 256"),
    (("lanes = 320 ", "lanes = 160 "), r"sram.word_bytes must equal vector.lanes \(160\).*got 320"),
    (("rows = 320", "rows = 160"), r"mxm.rows and mxm.cols must equal vector.lanes \(320\).*got 160 x 320"),
    (("lanes = 320", "lanes = [320"), "not valid TOML"),
])
def test_malformed_machine(edit, message):
    with pytest.raises(LpucError, match=message) as e:
        parse_machine(TSP.replace(*edit), "bad.toml")
    assert str(e.value).startswith("bad.toml: ") and "\n" not in str(e.value)


def _with(text: str, key: str, value) -> str:
    """`text` with `key` (section.name) set to `value` (TOML source), added if absent."""
    section, _, name = key.rpartition(".")
    head = f"[{section}]\n" if section else ""
    start = text.index(head) + len(head) if section else 0
    end = text.find("\n[", start) % (len(text) + 1)
    body, n = re.subn(rf"(?m)^{name} = .*$", f"{name} = {value}", text[start:end])
    return text[:start] + (body if n else f"{name} = {value}\n" + body) + text[end:]


NUMERIC = [f"{section.name}.{f.name}" if section else f.name
           for section in [None] + [f for f in dataclasses.fields(Machine) if f.type in _SECTIONS]
           for f in dataclasses.fields(_SECTIONS[section.type] if section else Machine) if f.type in ("int", "float")]
# Keys bound to another one: set that one too, so only the key under test is at its bound.
PARTNERS = {"sram.words_per_slice": ("sram.slices", 1), "topology.max_chips": ("topology.chips_per_node", 1)}
WIDTH = ("vector.lanes", "sram.word_bytes", "mxm.rows", "mxm.cols")  # one vector width: equal (ir/machine.py)


def test_every_number_has_a_range_and_tsp_v1_is_inside():
    assert sorted(NUMERIC) == sorted(RANGES)
    load_machine("tsp-v1")


@pytest.mark.parametrize("key", sorted(RANGES))
def test_ranges_accept_their_bounds_and_refuse_beyond(key):
    lo, hi, why = RANGES[key]
    base = _with(TSP, *PARTNERS[key]) if key in PARTNERS else TSP
    for bound in (lo, hi):
        text = base
        for k in WIDTH if key in WIDTH else (key,):
            text = _with(text, k, bound)
        machine = parse_machine(text, "m.toml")
        section, _, name = key.rpartition(".")
        assert getattr(getattr(machine, section) if section else machine, name) == bound
    is_int = isinstance(lo, int) and isinstance(hi, int)
    for bad in (lo - 1 if is_int else lo / 2, hi + 1 if is_int else hi * 2, "inf", "nan", "-inf", "true", '"1"',
                "[1]", 10**7, 10**30, 1e308):
        if lo == hi == bad:
            continue
        with pytest.raises(LpucError) as e:
            parse_machine(_with(base, key, bad), "bad.toml")
        message = str(e.value)
        assert message.startswith(f"bad.toml: {key} must be ") and f"({why}), got " in message, message
        assert "\n" not in message


@pytest.mark.parametrize("edit, message", [
    # accepted before, with results that mean nothing: a latency of "0.00 us", hops of 11 ms
    (("clock_mhz", "inf"), "clock_mhz must be a number from 1 to 10,000 (1 MHz to 10 GHz; tsp-v1: 900), got inf"),
    (("c2c.hop_latency_cycles", 10**7), "c2c.hop_latency_cycles must be an integer from 1 to 100,000"),
    (("topology.max_chips", 1), "topology.max_chips must be at least topology.chips_per_node (8): a dragonfly is "
                                "built of whole nodes, got 1"),
    # a MemoryError before: lists and arrays per slice, word, stream register and unit instance
    (("sram.slices", 10**7), "sram.slices must be an integer from 1 to 1,024"),
    (("sram.words_per_slice", 10**7), "sram.words_per_slice must be an integer from 1 to 1,048,576"),
    (("streams.east", 10**7), "streams.east must be an integer from 1 to 256"),
    (("mxm.planes", 10**7), "mxm.planes must be an integer from 1 to 64"),
    (("vxm.alus_per_lane", 10**7), "vxm.alus_per_lane must be an integer from 1 to 64"),
    # each in range, together more SRAM than the interpreter keeps
    (("sram.words_per_slice", 1 << 20), "sram.slices x sram.words_per_slice x sram.word_bytes must be at most "
                                        "4,294,967,296 bytes"),
])
def test_out_of_range_machines(edit, message):
    with pytest.raises(LpucError) as e:
        parse_machine(_with(TSP, *edit), "bad.toml")
    assert str(e.value).startswith(f"bad.toml: {message}"), str(e.value)


def test_unknown_machine_name():
    with pytest.raises(LpucError, match="no machine 'tsp-v9'.*tsp-v1"):
        load_machine("tsp-v9")

"""Machine descriptions: the shipped tsp-v1 carries the published figures, and
malformed files get one-line errors naming the key."""

from pathlib import Path

import pytest

from lpuc.ir import LpucError
from lpuc.ir.machine import SHIPPED, load_machine, parse_machine

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
    (("slices = 88", "slices = -1"), "sram.slices must be a positive integer"),
    (("slices = 88", 'slices = "many"'), "sram.slices must be a positive integer"),
    (("[sxm]", "[sxm]\nfoo = 1"), "unknown key sxm.foo"),
    (("clock_mhz = 900", ""), "missing key clock_mhz"),
    (('kind = "dragonfly"', 'kind = "mesh"'), "topology.kind must be one of"),
    (("word_bytes = 320", "word_bytes = 256"), "must be 320"),
    (("lanes = 320", "lanes = [320"), "not valid TOML"),
])
def test_malformed_machine(edit, message):
    with pytest.raises(LpucError, match=message) as e:
        parse_machine(TSP.replace(*edit), "bad.toml")
    assert str(e.value).startswith("bad.toml: ") and "\n" not in str(e.value)


def test_unknown_machine_name():
    with pytest.raises(LpucError, match="no machine 'tsp-v9'.*tsp-v1"):
        load_machine("tsp-v9")

"""Pieces (ir/pieces.py): ops that are a template's stamped elsewhere, written once as a template and a stamp
statement per piece, and read back as the same ops."""

from __future__ import annotations

import pytest

from lpuc.ir import ParseError, VerifyError, parse, print_module
from lpuc.ir.pieces import Template, find_pieces
from lpuc.ir.verifier import verify

# two pieces of the same two ops (%a, %b and %c, %d), another op between them, on chip 1 then chip 2
# (the verifier checks no chips: the interpreter does)
TEXT = """module @m attributes {chips = 3} {
  input %x : f32[1,400]
  input %y : f32[1,400]
  %xs = host.input %x {chip = 1, cycle = 0, name = "x", out = [[5, 0, 2]], streams = [0], unit = "host0"} : f32[1,400]
  %ys = host.input %y {chip = 1, cycle = 0, name = "y", out = [[6, 0, 2]], streams = [1], unit = "host1"} : f32[1,400]
  %a = vxm.add %xs, %ys {chip = 1, cycle = 5, out = [[0, 0, 2]], streams = [0, 1, 2], unit = "vxm0"} : f32[1,400]
  %b = vxm.mul %a, %xs {chip = 1, cycle = 10, out = [[1, 0, 2]], streams = [1, 2, 3], unit = "vxm1"} : f32[1,400]
  %e = vxm.add %xs, %ys {chip = 0, cycle = 15, out = [[2, 0, 2]], streams = [0, 1, 2], unit = "vxm0"} : f32[1,400]
  %c = vxm.add %b, %e {chip = 2, cycle = 25, out = [[0, 0, 2]], streams = [4, 5, 6], unit = "vxm3"} : f32[1,400]
  %d = vxm.mul %c, %b {chip = 2, cycle = 30, out = [[1, 0, 2]], streams = [1, 2, 7], unit = "vxm2"} : f32[1,400]
  output "d" = %d
}
"""


def _stamped(text: str = TEXT):
    m = parse(text)
    return m.replace(ops=m.ops, pieces=find_pieces(m.ops, [[(2, 3), (5, 6)]]))


def test_a_piece_is_written_as_a_stamp_and_read_back_as_the_same_ops():
    m = _stamped()
    assert [(p.template, p.ops) for p in m.pieces] == [(0, (2, 3)), (0, (5, 6))]
    text = print_module(m)
    assert "  template 0 {\n    %a = vxm.add" in text
    assert "  stamp 0 {ranks = [2, 3]}\n" in text
    assert ('  stamp 0 {chips = [2], cycle = 20, ranks = [5, 6], streams = [[4, 5, 6], [1, 2, 7]], '
            'units = "vxm3 vxm2", values = "b e c d"}\n') in text
    assert "%c = " not in text  # (written once: as the template's %a)
    back = parse(text)
    assert back == m and back.pieces == m.pieces and print_module(back) == text
    verify(back)


@pytest.mark.parametrize("change", [
    ("cycle = 30", "cycle = 31"),               # its cycles not moved by one offset
    ("%d = vxm.mul %c, %b", "%d = vxm.mul %c, %e"),  # two of its values one
    ("chip = 2, cycle = 30", "chip = 1, cycle = 30"),  # its chips not one renamed (two of the template's)
    ('unit = "vxm2"', 'unit = "-"'),              # a unit the text could not tell from none
])
def test_ops_that_are_not_the_template_stamped_are_no_piece(change):
    m = _stamped(TEXT.replace(*change))
    assert m.pieces == ()
    assert "stamp" not in print_module(m)


def test_a_piece_may_have_words_of_its_own():
    m = _stamped(TEXT.replace("chip = 2, cycle = 30, out = [[1, 0, 2]]", "chip = 2, cycle = 30, out = [[1, 8, 2]]"))
    text = print_module(m)
    assert "cycle = 20, out = [[[0, 0, 2]], [[1, 8, 2]]], ranks = [5, 6]" in text
    assert parse(text) == m and parse(text).pieces == m.pieces


def test_a_template_on_several_chips_or_of_other_length_stamps_nothing():
    m = parse(TEXT)
    assert Template([m.ops[2], m.ops[4]]).stamp_of([m.ops[5], m.ops[6]]) is None  # chips 1, 0 to chip 2
    assert Template(m.ops[2:4]).stamp_of(m.ops[5:6]) is None


def _written() -> str:
    return print_module(_stamped())


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("stamp 0 {chips = [2]", "stamp 5 {chips = [2]"), "stamp of template 5, which is not defined"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [5]"), "`ranks` must list the positions of its 2 ops"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [6, 5]"), "`ranks` must rise"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [5, 6.5]"), "`ranks`: a stamp's lists hold integers only"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [5, 6"), "bad list for `ranks`"),
    (lambda t: t.replace("cycle = 20,", "cycle = 20 21,"), "expected ',' or '}' after an attribute of a stamp"),
    (lambda t: t.replace("cycle = 20,", "cycle = twenty,"), "`cycle` must be an integer, a string or a list"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [5, 9]"), "an op at position 9, but the module has 6 ops"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [1, 6]"), "`ranks` must rise from at least 5"),
    (lambda t: t.replace('values = "b e c d"', 'values = "b e c"'), "`values` must name its 4 values"),
    (lambda t: t.replace('units = "vxm3 vxm2"', 'units = "vxm3"'), "`units` must name the unit of each of its 2 ops"),
    (lambda t: t.replace("streams = [[4, 5, 6], [1, 2, 7]]", "streams = [[4, 5], [1, 2, 7]]"),
     "`streams` must give the stream registers of each of its 2 ops"),
    (lambda t: t.replace("chips = [2], cycle = 20, ", "cycle = 20, "), "give chips, cycle, ranks"),
    (lambda t: t.replace("chips = [2]", "chips = [2, 1]"), "`chips` must give the chip of each of its 1 chips"),
    (lambda t: t.replace('values = "b e c d"', 'values = "b e a d"'), "value %a is defined twice"),
    (lambda t: t.replace('values = "b e c d"', 'values = "b q c d"'), "use of undefined value %q"),
    (lambda t: t.replace("  template 0 {", "  template 0 {\n  }\n  template 0 {"), "template 0 has no ops"),
    (lambda t: t.replace("ranks = [5, 6]", "ranks = [6, 7]").replace(
        "  stamp 0 {chips", "  stamp 0 {chips = [2], cycle = 20, ranks = [5, 7], streams = [[4, 5, 6], [1, 2, 7]], "
                            "units = \"vxm3 vxm2\", values = \"b e c2 d2\"}\n  stamp 0 {chips"),
     "an op at position 7, where another stamp has one"),
])
def test_a_bad_stamp_is_one_error_naming_its_line(edit, message):
    text = edit(_written())
    with pytest.raises(ParseError) as e:
        parse(text, "p.ir")
    assert message in str(e.value) and str(e.value).startswith("p.ir:") and "\n" not in str(e.value)


def test_a_stamp_whose_operand_has_another_type_is_refused_by_the_verifier():
    text = _written()
    verify(parse(text))
    text = text.replace("  input %y : f32[1,400]\n", "  input %y : f32[1,400]\n  input %z : f32[1,1]\n").replace(
        "%e = vxm.add %xs, %ys {chip = 0, cycle = 15, out = [[2, 0, 2]], streams = [0, 1, 2], unit = \"vxm0\"} : "
        "f32[1,400]",
        "%e = host.input %z {chip = 0, cycle = 15, name = \"z\", out = [[2, 0, 1]], streams = [0], unit = \"host0\"} : "
        "f32[1,1]")
    with pytest.raises(VerifyError, match=r"operand %e has type f32\[1,1\], but in the template it stamps"):
        verify(parse(text))


def test_a_piece_on_several_chips_renames_them():
    text = """module @m attributes {chips = 4} {
  input %x : f32[1,400]
  %xs = host.input %x {chip = 1, cycle = 0, name = "x", out = [[5, 0, 2]], streams = [0], unit = "host0"} : f32[1,400]
  %a = vxm.add %xs, %xs {chip = 1, cycle = 5, out = [[0, 0, 2]], streams = [0, 1, 2], unit = "vxm0"} : f32[1,400]
  %b = vxm.mul %xs, %xs {chip = 0, cycle = 8, out = [[0, 0, 2]], streams = [0, 1, 2], unit = "vxm0"} : f32[1,400]
  %c = vxm.add %xs, %xs {chip = 2, cycle = 25, out = [[0, 0, 2]], streams = [0, 1, 2], unit = "vxm1"} : f32[1,400]
  %d = vxm.mul %xs, %xs {chip = 3, cycle = 28, out = [[0, 0, 2]], streams = [3, 1, 2], unit = "vxm0"} : f32[1,400]
  output "d" = %d
}
"""
    m = parse(text)
    m = m.replace(ops=m.ops, pieces=find_pieces(m.ops, [[(1, 2), (3, 4)]]))
    assert len(m.pieces) == 2
    written = print_module(m)
    assert ('stamp 0 {chips = [2, 3], cycle = 20, ranks = [3, 4], streams = [[0, 1, 2], [3, 1, 2]], '
            'units = "vxm1 vxm0", values = "xs c d"}') in written
    assert parse(written) == m
    swapped = parse(text.replace("chip = 3, cycle = 28", "chip = 2, cycle = 28"))  # two chips made one
    assert find_pieces(swapped.ops, [[(1, 2), (3, 4)]]) == ()


def test_an_op_a_candidate_has_otherwise_is_left_out_of_the_pieces():
    """An op that a candidate has otherwise than stamped (on a dragonfly a send's route: its racks are no
    translation of one another) is written as it is, and the rest of the candidates are still pieces."""
    text = TEXT.replace('streams = [1, 2, 3], unit = "vxm1"', 'route = [1], streams = [1, 2, 3], unit = "vxm1"') \
        .replace('streams = [1, 2, 7], unit = "vxm2"', 'route = [2], streams = [1, 2, 7], unit = "vxm2"')
    m = _stamped(text)
    assert [(p.template, p.ops) for p in m.pieces] == [(0, (2,)), (0, (5,))]
    written = print_module(m)
    assert "  %b = vxm.mul" in written and "  %d = vxm.mul" in written  # (as they are, not stamped)
    back = parse(written)
    assert back == m and back.pieces == m.pieces
    # the same route in both: both ops are pieces again
    assert [p.ops for p in _stamped(text.replace("route = [2]", "route = [1]")).pieces] == [(2, 3), (5, 6)]


def test_a_stamp_is_checked_by_what_it_gives_each_op():
    """The verifier reads a piece's STAMPED from its stamp: words that are no extents are refused, naming the op
    the stamp made."""
    text = _written().replace("cycle = 20, ranks = [5, 6]", "cycle = 20, out = [[[0, 0, 2]], [[1, -8, 2]]], "
                                                               "ranks = [5, 6]")
    m = parse(text)
    assert m.pieces[1].stamp.out == (((0, 0, 2),), ((1, -8, 2),))
    with pytest.raises(VerifyError, match=r"%d = vxm.mul: .*out"):
        verify(m)

"""errors.printable: text someone else chose, made safe to print or log."""

from flowrl_deploy.errors import printable


def test_unprintable_characters_are_escaped_and_printable_ones_kept():
    assert printable("a\nb\x1b[2J\x00\u2028é µ") == "a\\nb\\x1b[2J\\x00\\u2028é µ"


def test_a_limit_cuts_and_marks_the_text_before_escaping():
    assert printable("x" * 101, 100) == "x" * 100 + "…"
    assert printable("x" * 100, 100) == "x" * 100
    assert printable("\n" * 3, 2) == "\\n\\n…"
    assert printable(7) == "7"

"""pope.units: lossless, LaTeX-aware sentence/step units and token units, on hand-made and real solutions."""

from __future__ import annotations

import json

import pytest

from pope.units import merge_headers, prefix, split_units
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.unit

# (text, expected units), each split written by hand.
HAND_SPLITS = [
    (
        "We have $x = 1.5$. So $y=2$.\n\nThus done.",
        ["We have $x = 1.5$. ", "So $y=2$.\n\n", "Thus done."],
    ),
    ("Use e.g. the sum, i.e. all. Then stop.", ["Use e.g. the sum, i.e. all. ", "Then stop."]),
    ("See Fig. 3 for pi = 3.14. Next.", ["See Fig. 3 for pi = 3.14. ", "Next."]),
    ("Note \\[ a. b \\] holds. End.", ["Note \\[ a. b \\] holds. ", "End."]),
    ("Let \\(x. y\\) be. Go!", ["Let \\(x. y\\) be. ", "Go!"]),
    ("$$x = 1.$$ Then y.", ["$$x = 1.$$ ", "Then y."]),
    ("It costs \\$5. Then $a. b$ ok.", ["It costs \\$5. ", "Then $a. b$ ok."]),
    (
        "\\begin{align*} x &= 1. \\\\ y &= 2. \\end{align*} Done. Yes.",
        ["\\begin{align*} x &= 1. \\\\ y &= 2. \\end{align*} ", "Done. ", "Yes."],
    ),
    (
        "\\begin{enumerate}\n\\item A. B.\n\n\\item C.\n\\end{enumerate}\n\nAfter.",
        ["\\begin{enumerate}\n\\item A. B.\n\n\\item C.\n\\end{enumerate}\n\n", "After."],
    ),
    (
        "\\begin{a}\\begin{a} x. \\end{a} y. \\end{a} Then z. w",
        ["\\begin{a}\\begin{a} x. \\end{a} y. \\end{a} ", "Then z. ", "w"],
    ),
    ("There are 5! ways. Done.", ["There are 5! ways. ", "Done."]),
    ("1, 2, ... and so on. End", ["1, 2, ... and so on. ", "End"]),
    ("\n\nFirst.  \n\n\nSecond.\n", ["\n\nFirst.  \n\n\n", "Second.\n"]),
    ("Start. \\[ x. y. Z", ["Start. ", "\\[ x. y. Z"]),  # unclosed: protected to the end
    ("Is it (really)? Yes (see above.) Done.", ["Is it (really)? ", "Yes (see above.) ", "Done."]),
    ("1. First step. 2. Second step.", ["1. First step. ", "2. Second step."]),
    ("a \\\\[2pt] b. c", ["a \\\\[2pt] b. ", "c"]),  # \\ then [2pt]: a line break, not \[
    ("no sentence end here\nbut a newline", ["no sentence end here\nbut a newline"]),
    ("Line one\n\nline two", ["Line one\n\n", "line two"]),  # a paragraph break needs no period
    ("[asy]\ndraw(a);\n\nlabel(b);\n[/asy]\n\nSo 3.", ["[asy]\ndraw(a);\n\nlabel(b);\n[/asy]\n\n", "So 3."]),
    ("", []),
    ("  \n\n ", ["  \n\n "]),
]


@pytest.mark.parametrize(("text", "expected"), HAND_SPLITS)
def test_hand_written_splits(text, expected):
    assert split_units(text) == expected
    assert "".join(expected) == text  # the table itself is lossless


def test_prefix_joins_first_units_exactly():
    text = "We have $x = 1.5$. So $y=2$.\n\nThus done."
    assert prefix(text, 0) == ""
    assert prefix(text, 1) == "We have $x = 1.5$. "
    assert prefix(text, 2) == "We have $x = 1.5$. So $y=2$.\n\n"
    assert prefix(text, 3) == text
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="3 units"):
            prefix(text, bad)


def _solutions() -> list[tuple[str, int, str]]:
    rows = []
    for name in ("omni_math_sample.jsonl", "math500_sample.jsonl"):
        with open(SHARED_DATA / name, encoding="utf-8") as handle:
            rows += [(name, i, json.loads(line)["solution"]) for i, line in enumerate(handle, start=1)]
    return rows


def _delimiter_counts(text: str) -> tuple[int, int, int, int, int]:
    """Naive count of unescaped $, \\[, \\], \\(, \\) (a backslash escapes the next character)."""
    dollars = opens = closes = paren_opens = paren_closes = 0
    i = 0
    while i < len(text):
        if text[i] == "\\":
            nxt = text[i + 1 : i + 2]
            opens += nxt == "["
            closes += nxt == "]"
            paren_opens += nxt == "("
            paren_closes += nxt == ")"
            i += 2
            continue
        dollars += text[i] == "$"
        i += 1
    return dollars, opens, closes, paren_opens, paren_closes


def test_every_real_solution_joins_back_and_no_boundary_is_inside_math():
    solutions = _solutions()
    assert len(solutions) == 480
    num_units = 0
    for name, row, text in solutions:
        units = split_units(text)
        where = f"{name}:{row}"
        assert "".join(units) == text, where
        assert all(unit.strip() for unit in units), where
        assert all(unit[-1].isspace() for unit in units[:-1]), where  # trailing whitespace kept
        for i in range(1, len(units)):
            before = "".join(units[:i])
            dollars, opens, closes, paren_opens, paren_closes = _delimiter_counts(before)
            assert dollars % 2 == 0, f"{where}: boundary {i} inside $...$"
            assert opens == closes, f"{where}: boundary {i} inside \\[...\\]"
            assert paren_opens == paren_closes, f"{where}: boundary {i} inside \\(...\\)"
            assert before.count("\\begin{") == before.count("\\end{"), f"{where}: boundary {i} in an env"
        num_units += len(units)
    assert num_units > 3 * len(solutions)  # it does split: these are multi-sentence solutions


def test_header_only_units_join_the_unit_after_them():
    units = ["### Solution\n\n", "First, $x = 1$. ", "**Step 2:** ", "Then $y = 2$.\n", "## End\n"]
    merged = merge_headers(units)
    assert merged == ["### Solution\n\nFirst, $x = 1$. ", "**Step 2:** Then $y = 2$.\n## End\n"]
    assert "".join(merged) == "".join(units)
    assert merge_headers(["Solution:\n"]) == ["Solution:\n"]
    assert merge_headers(["The answer is 3. ", "So:"]) == ["The answer is 3. So:"]


def test_headers_are_not_counted_on_the_real_solutions():
    """No loaded problem's solution step is a header alone (MATH-500 and Omni-MATH samples)."""
    from pope.datasets import FieldMap, load_file
    from pope.units import is_header

    for name in ("omni_math_sample.jsonl", "math500_sample.jsonl"):
        problems, _ = load_file(SHARED_DATA / name, FieldMap(), max_bad_fraction=1.0)
        assert all(not is_header(step) for p in problems for step in p.solution_steps[:-1]), name

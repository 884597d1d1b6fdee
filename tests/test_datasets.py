"""pope.datasets and `pope data validate`: every row reported, bad rows named, real data classified.

Expected rows and reasons below were worked out by reading the files, not by running the loader.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pope.datasets import (
    AnswerChecker,
    BadRow,
    FieldMap,
    load_file,
    load_hf,
    not_checkable_reason,
    validate_file,
)
from pope.units import merge_headers, split_units
from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.unit

SHARED_FILES = ("omni_math_sample.jsonl", "math500_sample.jsonl", "aime2025.jsonl", "hmmt_feb2025.jsonl")

# Omni-MATH rows whose answers are prose, proofs, families with qualifiers or identities, read by eye
# from the answer column (e.g. 1 "AE + AP = PD", 17 "\text{Proven}", 21 "\text{Both assertions are
# equivalent}", 27 "\text{ML} \perp \text{NK}", 60 "n \text{ must be odd}", 41 "f(x) = ax \text{ for }
# a \geq 0"); all other rows are numbers, expressions, tuples, sets, Yes/No or a single letter.
OMNI_NOT_CHECKABLE = {
    1,
    4,
    17,
    21,
    22,
    25,
    27,
    33,
    38,
    39,
    41,
    50,
    55,
    58,
    59,
    60,
    62,
    64,
    66,
    68,
    73,
    74,
    80,
}


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(timeout_s=10.0) as shared:
        yield shared


def _run_cli(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "orchestrator.cli", "data", "validate", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _parse_output(path: Path, stdout: str) -> tuple[dict[int, tuple[str, str]], dict[str, str]]:
    """({row: (field, reason)}, totals) from the report printed by `pope data validate`."""
    bad, totals = {}, {}
    for line in stdout.splitlines():
        if match := re.fullmatch(re.escape(str(path)) + r":(\d+): (\S+): (.*)", line):
            bad[int(match.group(1))] = (match.group(2), match.group(3))
        elif line.startswith(f"{path}: "):
            totals = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
            totals["verdict"] = line.split()[-1]
    return bad, totals


@pytest.fixture(scope="module")
def shared_reports():
    """`pope data validate` on each shared file, all four run at once."""
    running = {name: _run_cli(str(SHARED_DATA / name)) for name in SHARED_FILES}
    results = {}
    for name, proc in running.items():
        stdout, stderr = proc.communicate(timeout=300)
        bad, totals = _parse_output(SHARED_DATA / name, stdout)
        results[name] = {"rc": proc.returncode, "bad": bad, "totals": totals, "stderr": stderr}
    return results


def _num_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


@pytest.mark.parametrize("name", SHARED_FILES)
def test_validate_reports_every_row_of_the_shared_files(shared_reports, name):
    result = shared_reports[name]
    totals = result["totals"]
    num_lines = _num_lines(SHARED_DATA / name)
    assert totals, result["stderr"]
    assert int(totals["rows_total"]) == num_lines
    assert int(totals["rows_ok"]) + int(totals["rows_bad"]) == num_lines
    assert len(result["bad"]) == int(totals["rows_bad"])


@pytest.mark.parametrize("name", ["math500_sample.jsonl", "aime2025.jsonl", "hmmt_feb2025.jsonl"])
def test_benchmark_answers_are_all_checkable(shared_reports, name):
    # AIME/HMMT answers are integers and short expressions; MATH-500's are numbers, expressions,
    # intervals, matrices, equations like "y = 2x + 3" and single words like "\text{east}".
    result = shared_reports[name]
    assert result["bad"] == {}
    assert result["rc"] == 0
    assert result["totals"]["verdict"] == "ok"


def test_omni_math_proof_and_text_answers_are_flagged(shared_reports):
    with open(SHARED_DATA / "omni_math_sample.jsonl", encoding="utf-8") as handle:
        answers = {i: json.loads(line)["answer"] for i, line in enumerate(handle, start=1)}
    assert answers[1] == "AE + AP = PD"
    assert answers[17] == "\\text{Proven}"
    assert answers[60] == "n \\text{ must be odd}"
    result = shared_reports["omni_math_sample.jsonl"]
    assert set(result["bad"]) == OMNI_NOT_CHECKABLE
    assert all(field == "answer" for field, _ in result["bad"].values())
    assert "relation between expressions" in result["bad"][1][1]
    assert "proof" in result["bad"][17][1]
    assert "prose" in result["bad"][21][1]
    assert "geometric relation" in result["bad"][27][1]
    assert "prose" in result["bad"][60][1]
    # numeric, radical, fraction, tuples, a set, an inequality, a relation of two symbols, Yes/No: accepted
    for row, answer in [
        (8, "26"),
        (29, "\\sqrt{3}"),
        (49, "\\frac{17}{1900}"),
        (15, "(2, 3), (2, 5), (3, 2), (5, 2), (5, 5), (5, 313), (313, 5)"),
        (7, "2, 3"),
        (35, "m \\neq 1"),
        (76, "\\[ a > b \\]"),
        (44, "\\text{No}"),
    ]:
        assert answers[row] == answer
        assert row not in result["bad"]
    # 23 of 80 bad is over the default 10%: the command fails
    assert result["totals"]["rows_bad"] == "23"
    assert result["rc"] == 1
    assert result["totals"]["verdict"] == "FAIL"


@pytest.mark.parametrize(
    "answer",
    [
        "42",
        "-3.5",
        "\\frac{3}{4}",
        "2\\sqrt{3}",
        "(-\\infty, 2] \\cup [3, 5)",
        "(1, 2, 3)",
        "\\{1, 2\\}",
        "x = 5",
        "m \\neq 1",
        "5x - 7y + 11z + 4 = 0",
        "P(x,y,z) = x^2 + y^2 + z^2 + 2xyz",
        "\\sin x \\cos y \\tan z",
        "\\text{Yes}",
        "864 \\mbox{ inches}^2",
    ],
)
def test_checkable_answers_pass_the_text_rules(answer):
    assert not_checkable_reason(answer) is None


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("AE + AP = PD", "relation between expressions"),
        ("AB \\cdot CD = AC \\cdot BD", "relation between expressions"),
        ("\\text{ML} \\perp \\text{NK}", "geometric relation"),
        ("\\text{Proven}", "a proof"),
        ("n \\text{ must be odd}", "prose"),
        ("A positive integral solution exists.", "prose"),
        ("k = 2^a - 1 \\text{ for } a \\in \\mathbb{N}", "qualified by 'for'"),
    ],
)
def test_prose_proofs_and_identities_fail_the_text_rules(answer, kind):
    reason = not_checkable_reason(answer)
    assert reason is not None and kind in reason


HAND_MADE_LINES = [
    '{"problem": "What is 1+1?", "answer": "2", "solution": "So 2. Done."}',  # 1 ok
    '{"problem": "broken", "answer": ',  # 2 not JSON
    '{"answer": "3"}',  # 3 no problem
    '{"problem": "Seven?", "answer": 7}',  # 4 ok: the number becomes "7"
    '{"problem": "Pair?", "answer": [1, 2]}',  # 5 a list answer
    "",  # 6 blank: not a row
    '{"problem": "Prove it.", "answer": "\\\\text{Proven}"}',  # 7 a proof
    '{"problem": "Bool?", "answer": true}',  # 8 a boolean answer
    '{"problem": "Half?", "answer": "1/2", "solution": 5}',  # 9 a number as solution
    "[1, 2]",  # 10 not an object
    '{"problem": "   ", "answer": "1"}',  # 11 empty problem
    '{"problem": 12, "answer": "1"}',  # 12 problem not a string
]
HAND_MADE_BAD = {
    3: ("problem", "missing"),
    5: ("answer", "expected a string or number, got list"),
    7: ("answer", "not machine-checkable: a proof ('Proven')"),
    8: ("answer", "expected a string or number, got bool"),
    9: ("solution", "expected a string, got int"),
    10: (None, "expected an object, got list"),
    11: ("problem", "empty"),
    12: ("problem", "expected a string, got int"),
}


@pytest.fixture
def hand_made(tmp_path) -> Path:
    path = tmp_path / "hand_made.jsonl"
    path.write_text("\n".join(HAND_MADE_LINES) + "\n", encoding="utf-8")
    return path


def test_hand_made_file_reports_exact_rows_and_reasons(hand_made, checker):
    problems, report = validate_file(hand_made, checker=checker)
    assert (report.rows_total, report.rows_ok, report.rows_bad) == (11, 2, 9)
    assert report.path == str(hand_made)
    assert [bad.row for bad in report.bad_rows] == [2, 3, 5, 7, 8, 9, 10, 11, 12]
    json_error = report.bad_rows[0]
    assert json_error.field is None and json_error.reason.startswith("not valid JSON")
    assert {bad.row: (bad.field, bad.reason) for bad in report.bad_rows[1:]} == HAND_MADE_BAD
    first, fourth = problems
    assert (first.problem_id, first.problem, first.answer) == ("hand_made-1", "What is 1+1?", "2")
    assert first.solution_steps == ("So 2. ", "Done.")
    assert (fourth.problem_id, fourth.answer, fourth.solution_steps) == ("hand_made-4", "7", ())
    assert first.source == str(hand_made)


def test_too_many_bad_rows_raise_naming_the_file(hand_made, checker):
    with pytest.raises(ValueError, match=r"hand_made\.jsonl: 9 of 11 rows bad") as caught:
        load_file(hand_made, max_bad_fraction=0.1, checker=checker)
    assert "row 3 problem: missing" in str(caught.value)
    problems, report = load_file(hand_made, max_bad_fraction=0.9, checker=checker)  # 9/11 = 0.82
    assert len(problems) == 2 and report.rows_bad == 9
    with pytest.raises(ValueError, match="max_bad_fraction"):
        load_file(hand_made, max_bad_fraction=1.5, checker=checker)


def test_a_file_without_usable_rows_fails_even_at_fraction_one(tmp_path, checker):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.jsonl: 0 of 0 rows bad"):
        load_file(path, max_bad_fraction=1.0, checker=checker)


def test_cli_prints_every_bad_row_and_fails(hand_made):
    proc = _run_cli(str(hand_made), "--max-bad-fraction", "0.5")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    bad, totals = _parse_output(hand_made, stdout)
    expected = {row: (field or "(row)", reason) for row, (field, reason) in HAND_MADE_BAD.items()}
    assert {row: value for row, value in bad.items() if row != 2} == expected
    assert bad[2][0] == "(row)" and bad[2][1].startswith("not valid JSON")
    assert totals["rows_total"] == "11" and totals["rows_ok"] == "2" and totals["rows_bad"] == "9"
    assert totals["max_bad_fraction"] == "0.5"
    proc = _run_cli(str(hand_made), "--max-bad-fraction", "0.85")  # 9/11 = 0.818 <= 0.85
    assert proc.wait(timeout=120) == 0
    proc = _run_cli(str(hand_made.with_suffix(".csv")))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no such file" in stderr


def test_field_map_and_ids(tmp_path, checker):
    path = tmp_path / "renamed.jsonl"
    rows = [
        {"uid": "a", "question": "Q1?", "final": "\\frac{1}{2}", "worked": "Half. So $\\frac12$."},
        {"uid": 7, "question": "Q2?", "final": "3"},
        {"uid": "a", "question": "Q3?", "final": "4"},
        {"question": "Q4?", "final": "5"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    fields = FieldMap(problem="question", answer="final", solution="worked", id="uid")
    problems, report = validate_file(path, fields, checker=checker)
    assert [p.problem_id for p in problems] == ["a", "7"]
    assert problems[0].solution_steps == ("Half. ", "So $\\frac12$.")
    assert report.bad_rows == [
        BadRow(3, "uid", "duplicate id 'a' (row 1)"),
        BadRow(4, "uid", "missing"),
    ]
    proc = _run_cli(str(path), "--problem-field", "question", "--answer-field", "final", "--id-field", "uid")
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1  # 2 of 4 bad
    assert f"{path}:3: uid: duplicate id 'a' (row 1)" in stdout.splitlines()


def test_solution_steps_are_the_units_of_the_stripped_solution(checker):
    path = SHARED_DATA / "math500_sample.jsonl"
    problems, _ = validate_file(path, checker=checker)
    with open(path, encoding="utf-8") as handle:
        solutions = [json.loads(line)["solution"] for line in handle]
    assert len(problems) == len(solutions)
    for problem, solution in zip(problems, solutions, strict=True):
        assert problem.solution_steps == tuple(merge_headers(split_units(solution.strip())))
        assert "".join(problem.solution_steps) == solution.strip()


def test_a_slow_parse_is_killed_at_its_deadline_and_the_next_answer_still_checks():
    slow = "+".join(f"x_{{{i}}}^{{{i}}}" for i in range(1000))  # about 12 s to parse here
    with AnswerChecker(timeout_s=1.0) as timed:
        assert timed.reason("42") is None  # starts the child; its start is not charged to the deadline
        start = time.monotonic()
        assert timed.reason(slow) == "math-verify parse exceeded 1 s"
        assert time.monotonic() - start < 6.0
        assert timed.num_timeouts == 1
        assert timed.reason("\\frac{1}{3}") is None  # a fresh child


def test_parquet_round_trip(tmp_path, checker):
    pyarrow = pytest.importorskip("pyarrow")
    from pyarrow import parquet

    rows = [
        {"problem": "One?", "answer": "1", "solution": "It is 1. Done."},
        {"problem": "Two?", "answer": "2", "solution": "So 2."},
        {"problem": "Proof?", "answer": "\\text{Proven}", "solution": "Trivially."},
    ]
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    parquet_path = tmp_path / "same.parquet"
    parquet.write_table(pyarrow.Table.from_pylist(rows), parquet_path)
    from_jsonl, jsonl_report = validate_file(jsonl, checker=checker)
    from_parquet, parquet_report = validate_file(parquet_path, checker=checker)
    assert [(p.problem_id, p.problem, p.answer, p.solution_steps) for p in from_parquet] == [
        ("same-1", "One?", "1", ("It is 1. ", "Done.")),
        ("same-2", "Two?", "2", ("So 2.",)),
    ]
    assert [(p.problem, p.answer, p.solution_steps) for p in from_parquet] == [
        (p.problem, p.answer, p.solution_steps) for p in from_jsonl
    ]
    assert parquet_report.bad_rows == jsonl_report.bad_rows
    assert parquet_report.bad_rows[0].row == 3


def test_hf_dataset_without_datasets_says_how_to_install():
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed")
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf("some/dataset")


def test_hf_dataset_rows_through_a_local_datasets_package(tmp_path, monkeypatch):
    """A stand-in ``datasets`` package on sys.path: rows numbered from 1 in the split, ids from the name."""
    (tmp_path / "datasets.py").write_text(
        "def load_dataset(name, config_name, split):\n"
        "    assert (name, config_name, split) == ('org/set', None, 'test')\n"
        "    return [{'question': 'Q?', 'answer': 4}, {'question': 'R?', 'answer': '\\\\text{Proven}'}]\n",
        encoding="utf-8",
    )
    spec = importlib.util.spec_from_file_location("datasets", tmp_path / "datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", module)  # removed again after the test
    problems, report = load_hf(
        "org/set", split="test", fields=FieldMap(problem="question"), max_bad_fraction=0.5
    )
    assert [(p.problem_id, p.problem, p.answer, p.source) for p in problems] == [
        ("org_set-test-1", "Q?", "4", "hf:org/set[test]")
    ]
    assert report.bad_rows == [BadRow(2, "answer", "not machine-checkable: a proof ('Proven')")]


def test_unknown_format_and_missing_file(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("problem,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.csv: unknown format '\.csv'"):
        validate_file(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        validate_file(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("hf:KbsdJames/Omni-MATH", ("KbsdJames/Omni-MATH", None, "train")),
        ("hf:KbsdJames/Omni-MATH:test", ("KbsdJames/Omni-MATH", None, "test")),
        ("hf:org/name:default:validation", ("org/name", "default", "validation")),
    ],
)
def test_hf_source_names(source, expected):
    from pope.datasets import parse_hf_source

    assert parse_hf_source(source) == expected


@pytest.mark.parametrize("source", ["hf:", "hf:org/name:", "hf:a:b:c:d", "org/name"])
def test_bad_hf_source_names_say_the_form(source):
    from pope.datasets import parse_hf_source

    with pytest.raises(ValueError, match="expected hf:ORG/NAME"):
        parse_hf_source(source)


def test_a_source_that_is_neither_file_nor_hf_name_is_named(tmp_path):
    from pope.datasets import load_source

    with pytest.raises(FileNotFoundError, match="missing.jsonl: no such file"):
        load_source(str(tmp_path / "missing.jsonl"))


def test_hostile_rows_become_row_errors_and_the_file_goes_on(tmp_path):
    """A duplicate key, an integer over Python's 4,300-digit limit and deep nesting are row errors
    naming the row (and the key); before, the first two passed silently or aborted the whole file."""
    path = tmp_path / "hostile.jsonl"
    rows = [
        '{"problem": "1+1?", "answer": "2"}',
        '{"problem": "a", "answer": "1", "answer": "2"}',
        '{"problem": "a", "answer": ' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        '{"problem": "2+2?", "answer": "4"}',
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    problems, report = validate_file(path)
    assert [p.answer for p in problems] == ["2", "4"]
    bad = {b.row: (b.field, b.reason) for b in report.bad_rows}
    assert bad[2] == ("answer", "the key appears twice in the row's object")
    assert bad[3][0] is None and "4300 digits" in bad[3][1]
    assert bad[4] == (None, "not usable JSON (nested too deeply)")
    assert report.rows_total == 5 and report.rows_bad == 3


def test_the_word_run_check_is_linear_in_the_answer_length():
    """20,000 letters with no space: no word run; the old backtracking pattern took ~26 s here."""
    from pope.datasets import _long_word_run

    assert _long_word_run("a" * 20_000) is None
    assert _long_word_run("ab " * 10_000).startswith("ab ab ab")
    assert _long_word_run("n must be odd") == "n must be odd" and _long_word_run("x y z") is None

"""Problems with gold answers and oracle solutions from JSONL, Parquet or a Hugging Face dataset.

Every row is validated and the outcome is a ``LoadReport`` next to the problems:

- ``rows_ok + rows_bad == rows_total``; one ``BadRow`` per bad row (its first problem found), in
  row order, naming the row (1-based), the field as the file spells it, and the reason.
- Rows are numbered from 1: the line number in a JSONL file (a blank line is no row but keeps its
  number, so numbers match an editor's), the row index in a Parquet file or a dataset split.
- A row is bad when it is not a JSON object, its problem is missing/empty/not a string, its answer
  is missing/empty/not a string or finite number (numbers become strings, booleans are bad), its
  solution is present but not a string, its id (``FieldMap.id``) is not a string or int or
  repeats an earlier row's, or its answer is not machine-checkable (below).
- ``load_*`` raise ``ValueError`` (naming the file, the bad fraction and the first reasons) only
  when ``rows_bad / rows_total > max_bad_fraction`` or no row is usable; ``validate_file`` never
  raises for bad rows.
- ``solution_steps == tuple(merge_headers(split_units(solution.strip())))`` (``pope.units``), so the steps join
  back to the stripped solution exactly, each keeping its trailing whitespace.

Machine-checkable gold answers (tuned on the Omni-MATH, MATH-500, AIME and HMMT rows in
shared/data). ``plain`` is the answer with LaTeX command names (``\\text``, ``\\frac``, ...) and
braces replaced by spaces; a *word* is a run of letters. An answer is NOT checkable when:

1. ``plain`` names a proof (``proof``, ``proved``, ``proven``, ``shown``, ``QED``): "\\text{Proven}";
2. ``plain`` holds 3+ consecutive words separated only by spaces, at least two of them 2+
   letters long (single letters are variables, so ``x y z`` passes): "n \\text{ must be odd}";
3. ``plain`` holds a qualifier word (``for``, ``where``, ``if``, ``iff``, ``when``, ``whenever``,
   ``unless``, ``provided``): a family or a case split, "f(x) = ax \\text{ for } a \\geq 0";
4. it states a geometric relation (``\\perp``, ``\\parallel``, ``\\cong``, ``\\sim``, ``\\simeq``);
5. one of its clauses (split at top-level commas, ``\\text{..}``, ``&``, ``\\\\``) is a relation
   (``=``, ``\\ne``, ``<``, ``>``, ``\\le``, ``\\ge``, ``\\approx``, ``\\equiv``) none of whose sides
   is simple: a symbol or function application (``x``, ``\\lambda``, ``a_1``, ``f(x)``,
   ``P(x,y,z)``) or a constant (no letters once command names are removed). So "AE + AP = PD"
   fails while "x = 5", "m \\neq 1", "P(x,y,z) = x^2+..." and "5x - 7y + 11z + 4 = 0" pass;
6. otherwise math-verify parses ``$answer$`` (outer ``$``, ``$$``, ``\\[..\\]``, ``\\(..\\)`` removed
   first) to no mathematical object. math-verify echoes the input string in every result, so
   "non-empty" means at least one non-string (sympy) element.

Numbers, fractions, radicals, intervals, tuples, sets, matrices, "Yes"/"No" and single-word
names pass; prose and proofs fail.

Why a child process for math-verify: its own timeout uses SIGALRM, which only works on the main
thread (a loader may run in a Ray actor or a launcher thread) and cannot interrupt long C-level
work; a length cap alone bounds nothing (a 14k-char sum parses in ~12 s here). So parsing runs
in one child process (``AnswerChecker``) with math-verify's timeout disabled; each answer gets a
deadline, and a child that misses it is killed, the row is reported as a timeout, and the next
answer gets a fresh child. The cheap rules 1-5 run first in the parent, so prose never reaches it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pope.problems import Problem, builtin_arithmetic, builtin_chains
from pope.units import merge_headers, split_units
from pope.verify import MathVerifyRunner, unwrap_math

NUM_REASONS_IN_ERROR = 5


class DataError(ValueError):
    """A problem source that cannot be used (too many bad rows, an unknown format or name): its
    message names the file and the reasons, and the command line prints it as one line."""


PREFIX_UNITS_FIELD = "pope_prefix_units"  # written by `pope find-prefixes`: the guidance prefix i*(x)


@dataclass(frozen=True)
class FieldMap:
    """Which field of a row holds what; ``id=None`` numbers problems ``<file stem>-<row>``."""

    problem: str = "problem"
    answer: str = "answer"
    solution: str = "solution"
    id: str | None = None


@dataclass(frozen=True)
class BadRow:
    row: int  # 1-based
    field: str | None  # the field as the file spells it; None for the whole row
    reason: str


@dataclass
class LoadReport:
    path: str
    rows_total: int = 0
    rows_ok: int = 0
    rows_bad: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return self.rows_bad / self.rows_total if self.rows_total else 0.0

    def acceptable(self, max_bad_fraction: float) -> bool:
        """At least one usable row and a bad fraction of at most ``max_bad_fraction``."""
        return self.rows_ok > 0 and self.bad_fraction <= max_bad_fraction


# ---- the not-checkable rules 1-5 (pure; see the module docstring) ----

_COMMAND = re.compile(r"\\[A-Za-z]+|\\.")
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\s*\{[^{}]*\}")
# starts only at a word's start and never gives letters back (possessive): linear in the answer's
# length (a plain backtracking version took 25 s on a 20,000-letter answer)
_WORD_RUN = re.compile(r"(?<![A-Za-z])[A-Za-z]++(?:[ \t\n]++[A-Za-z]++){2,}")
_PROOF_WORD = re.compile(r"\b(?:proof|proved|proven|shown|q\.?e\.?d)\b", re.IGNORECASE)
_QUALIFIER = re.compile(r"\b(?:for|where|if|iff|when|whenever|unless|provided)\b", re.IGNORECASE)
_GEOMETRIC = re.compile(r"\\(?:perp|parallel|nparallel|cong|simeq|sim)(?![A-Za-z])")
_RELATION = re.compile(r"=|<|>|\\(?:neq?|leq?|geq?|leqslant|geqslant|lt|gt|approx|equiv)(?![A-Za-z])")
_TEXT_GROUP = re.compile(r"\\(?:text|mbox|textbf|textit|mathrm|operatorname)\s*\{[^{}]*\}|&|\\\\")
_SYMBOL = re.compile(
    r"[+-]?\s*(?:[A-Za-z]|\\[A-Za-z]+(?:\s*\{[^{}]*\})?)"  # x, \lambda, \vec{v}
    r"(?:\s*_\s*(?:\{[^{}]*\}|[A-Za-z0-9]))?'*"  # a_1, a_{ij}, f'
    r"(?:\s*(?:\\left)?\([^()]*(?:\\right)?\))?"  # f(x), P(x,y,z)
)


def _plain(answer: str) -> str:
    """The answer with environment names, command names and braces replaced by spaces."""
    return re.sub(r"[{}]", " ", _COMMAND.sub(" ", _ENVIRONMENT.sub(" ", answer)))


def _long_word_run(plain: str) -> str | None:
    for match in _WORD_RUN.finditer(plain):
        if sum(len(word) >= 2 for word in match.group().split()) >= 2:
            return match.group()
    return None


def _clauses(answer: str) -> list[str]:
    """Split at top-level commas and at text groups, ``&`` and ``\\\\``."""
    text = _TEXT_GROUP.sub(",", answer)
    clauses, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            clauses.append(text[start:i])
            start = i + 1
    clauses.append(text[start:])
    return clauses


def _is_simple_side(side: str) -> bool:
    side = side.strip()
    is_constant = side != "" and not re.search(r"[A-Za-z]", _COMMAND.sub("", side))
    return is_constant or _SYMBOL.fullmatch(side) is not None


def not_checkable_reason(answer: str) -> str | None:
    """Why a gold answer is prose, a proof or an identity (rules 1-5), or None when it may be checked."""
    answer = unwrap_math(answer)
    plain = _plain(answer)
    if match := _PROOF_WORD.search(plain):
        return f"not machine-checkable: a proof ({match.group()!r})"
    if run := _long_word_run(plain):
        return f"not machine-checkable: prose ({' '.join(run.split())!r})"
    if match := _QUALIFIER.search(plain):
        return f"not machine-checkable: a family or case split (qualified by {match.group()!r})"
    if match := _GEOMETRIC.search(answer):
        return f"not machine-checkable: a geometric relation ({match.group()})"
    for clause in _clauses(answer):
        sides = _RELATION.split(clause)
        if len(sides) > 1 and not any(_is_simple_side(side) for side in sides):
            return f"not machine-checkable: a relation between expressions ({clause.strip()!r})"
    return None


class AnswerChecker:
    """Rules 1-5 in process, then math-verify's parse (``pope.verify``, task ``parse``) in a child
    process killed after ``timeout_s`` per answer.

    The child starts on first use (importing math-verify takes seconds; that start has its own
    ``startup_timeout_s``) and is reused; a context manager, or ``close()``, stops it.
    """

    def __init__(self, timeout_s: float = 5.0, startup_timeout_s: float = 120.0):
        self._runner = MathVerifyRunner("parse", timeout_s, startup_timeout_s)
        self.timeout_s = timeout_s

    @property
    def num_timeouts(self) -> int:
        return self._runner.timeouts

    def reason(self, answer: str) -> str | None:
        """None when ``answer`` is machine-checkable, else why not."""
        if reason := not_checkable_reason(answer):
            return reason
        (outcome,) = self._runner.run([answer])
        if outcome.status == "timeout":
            return f"math-verify parse exceeded {self.timeout_s:g} s"
        if outcome.status == "died":
            return str(outcome.value)
        if outcome.status == "error":
            return f"math-verify failed: {outcome.value}"
        return None if outcome.value else "not machine-checkable: math-verify finds no mathematical object"

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- rows ----


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _text_field(row: dict, name: str, required: bool) -> tuple[str | None, str | None]:
    """(value, None) or (None, reason). An optional field that is absent or null is ''."""
    value = row.get(name)
    if value is None:
        return (None, "missing") if required else ("", None)
    if not isinstance(value, str):
        return None, f"expected a string, got {_type_name(value)}"
    if required and not value.strip():
        return None, "empty"
    return value, None


def _scalar_field(row: dict, name: str, numbers: tuple[type, ...]) -> tuple[str | None, str | None]:
    """(value as stripped text, None) or (None, reason); ``numbers`` are the number types allowed."""
    value = row.get(name)
    if value is None:
        return None, "missing"
    if isinstance(value, bool) or not isinstance(value, (str, *numbers)):
        expected = "a string or number" if float in numbers else "a string or int"
        return None, f"expected {expected}, got {_type_name(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"not a finite number ({value})"
    text = str(value).strip()
    return (text, None) if text else (None, "empty")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed row or a BadRow) per non-blank line."""
    with open(path, "rb") as handle:
        for row_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield row_number, BadRow(row_number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield row_number, json.loads(line, object_pairs_hook=_no_duplicate_keys)
            except json.JSONDecodeError as exc:
                yield (
                    row_number,
                    BadRow(row_number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"),
                )
            except _DuplicateKey as exc:
                yield row_number, BadRow(row_number, exc.key, "the key appears twice in the row's object")
            except ValueError as exc:  # an integer of over 4,300 digits (Python's int limit)
                yield row_number, BadRow(row_number, None, f"not usable JSON ({exc})")
            except RecursionError:
                yield row_number, BadRow(row_number, None, "not usable JSON (nested too deeply)")


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key twice in one object is an error (json.loads keeps the last silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _require(module: str, install: str, what: str):
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise ImportError(f"{what} needs the {top!r} package: pip install {install}")
    return importlib.import_module(module)


def _parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    parquet = _require("pyarrow.parquet", "pyarrow", f"reading {path}")
    yield from enumerate(parquet.read_table(path).to_pylist(), start=1)


def validate_rows(
    rows: Iterable[tuple[int, object]],
    source: str,
    id_prefix: str,
    fields: FieldMap = FieldMap(),
    checker: AnswerChecker | None = None,
) -> tuple[list[Problem], LoadReport]:
    """Problems from (row number, row) pairs; a row may be a ``BadRow`` already (unreadable line)."""
    report = LoadReport(path=source)
    problems: list[Problem] = []
    first_row_of_id: dict[str, int] = {}
    own_checker = checker is None
    checker = checker or AnswerChecker()
    try:
        for row_number, row in rows:
            report.rows_total += 1
            outcome = _problem_from_row(row_number, row, source, id_prefix, fields, checker, first_row_of_id)
            if isinstance(outcome, BadRow):
                report.rows_bad += 1
                report.bad_rows.append(outcome)
            else:
                report.rows_ok += 1
                problems.append(outcome)
    finally:
        if own_checker:
            checker.close()
    return problems, report


def _problem_from_row(
    row_number: int,
    row: object,
    source: str,
    id_prefix: str,
    fields: FieldMap,
    checker: AnswerChecker,
    first_row_of_id: dict[str, int],
) -> Problem | BadRow:
    if isinstance(row, BadRow):
        return row
    if not isinstance(row, dict):
        return BadRow(row_number, None, f"expected an object, got {_type_name(row)}")
    problem, reason = _text_field(row, fields.problem, required=True)
    if reason:
        return BadRow(row_number, fields.problem, reason)
    answer, reason = _scalar_field(row, fields.answer, (int, float))
    if reason:
        return BadRow(row_number, fields.answer, reason)
    solution, reason = _text_field(row, fields.solution, required=False)
    if reason:
        return BadRow(row_number, fields.solution, reason)
    problem_id = f"{id_prefix}-{row_number}"
    if fields.id is not None:
        problem_id, reason = _scalar_field(row, fields.id, (int,))
        if reason:
            return BadRow(row_number, fields.id, reason)
        if problem_id in first_row_of_id:
            return BadRow(
                row_number, fields.id, f"duplicate id {problem_id!r} (row {first_row_of_id[problem_id]})"
            )
        first_row_of_id[problem_id] = row_number
    if reason := checker.reason(answer):
        return BadRow(row_number, fields.answer, reason)
    prefix_units = row.get(PREFIX_UNITS_FIELD)
    if prefix_units is not None and (
        isinstance(prefix_units, bool) or not isinstance(prefix_units, int) or prefix_units < 0
    ):
        return BadRow(
            row_number, PREFIX_UNITS_FIELD, f"expected a non-negative integer, got {prefix_units!r}"
        )
    return Problem(
        problem_id=problem_id,
        problem=problem,
        answer=answer,
        solution_steps=tuple(merge_headers(split_units(solution.strip()))),
        source=source,
        prefix_units=prefix_units,
    )


# ---- entry points ----


def check_bad_fraction(report: LoadReport, max_bad_fraction: float) -> None:
    """Raise ValueError naming the file, the bad fraction and the first reasons, when over the limit."""
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction={max_bad_fraction}: must be in [0, 1]")
    if report.acceptable(max_bad_fraction):
        return
    reasons = "; ".join(
        f"row {bad.row} {bad.field or '(row)'}: {bad.reason}"
        for bad in report.bad_rows[:NUM_REASONS_IN_ERROR]
    )
    more = len(report.bad_rows) - NUM_REASONS_IN_ERROR
    if more > 0:
        reasons += f"; and {more} more"
    raise DataError(
        f"{report.path}: {report.rows_bad} of {report.rows_total} rows bad "
        f"({report.bad_fraction:.1%}, max_bad_fraction {max_bad_fraction:g}), {report.rows_ok} usable"
        + (f": {reasons}" if reasons else "")
    )


def validate_file(
    path: str | Path, fields: FieldMap = FieldMap(), checker: AnswerChecker | None = None
) -> tuple[list[Problem], LoadReport]:
    """Problems and the report for a ``.jsonl`` or ``.parquet`` file; bad rows never raise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise DataError(f"{path}: unknown format {path.suffix!r} (expected .jsonl or .parquet)")
    return validate_rows(rows, str(path), path.stem, fields, checker)


def load_file(
    path: str | Path,
    fields: FieldMap = FieldMap(),
    max_bad_fraction: float = 0.1,
    checker: AnswerChecker | None = None,
) -> tuple[list[Problem], LoadReport]:
    """``validate_file``, raising ValueError when more than ``max_bad_fraction`` of the rows are bad."""
    problems, report = validate_file(path, fields, checker)
    check_bad_fraction(report, max_bad_fraction)
    return problems, report


def load_hf(
    name: str,
    split: str = "train",
    config_name: str | None = None,
    fields: FieldMap = FieldMap(),
    max_bad_fraction: float = 0.1,
    checker: AnswerChecker | None = None,
) -> tuple[list[Problem], LoadReport]:
    """A Hugging Face dataset split via ``datasets.load_dataset`` (needs the ``datasets`` package)."""
    hf = _require("datasets", "datasets", f"loading the Hugging Face dataset {name!r}")
    dataset = hf.load_dataset(name, config_name, split=split)
    source = f"hf:{name}" + (f"/{config_name}" if config_name else "") + f"[{split}]"
    id_prefix = f"{name.replace('/', '_')}-{split}"
    problems, report = validate_rows(enumerate(dataset, start=1), source, id_prefix, fields, checker)
    check_bad_fraction(report, max_bad_fraction)
    return problems, report


def parse_hf_source(source: str) -> tuple[str, str | None, str]:
    """``hf:ORG/NAME``, ``hf:ORG/NAME:SPLIT`` or ``hf:ORG/NAME:CONFIG:SPLIT`` -> (name, config, split)."""
    parts = source.removeprefix("hf:").split(":")
    if not source.startswith("hf:") or not parts[0] or len(parts) > 3 or not all(parts):
        raise DataError(f"{source!r}: expected hf:ORG/NAME, hf:ORG/NAME:SPLIT or hf:ORG/NAME:CONFIG:SPLIT")
    if len(parts) == 1:
        return parts[0], None, "train"
    if len(parts) == 2:
        return parts[0], None, parts[1]
    return parts[0], parts[1], parts[2]


def load_source(
    source: str, fields: FieldMap = FieldMap(), max_bad_fraction: float = 0.1
) -> tuple[list[Problem], LoadReport]:
    """A JSONL/Parquet file, or a Hugging Face dataset named ``hf:ORG/NAME[:CONFIG][:SPLIT]`` (online)."""
    if source.startswith("hf:"):
        name, config_name, split = parse_hf_source(source)
        return load_hf(name, split, config_name, fields, max_bad_fraction)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file (and not hf:ORG/NAME)")
    return load_file(path, fields, max_bad_fraction=max_bad_fraction)


def format_report(report: LoadReport, max_bad_fraction: float) -> str:
    """One line per bad row (``path:row: field: reason``), then the totals and the verdict."""
    lines = [f"{report.path}:{bad.row}: {bad.field or '(row)'}: {bad.reason}" for bad in report.bad_rows]
    verdict = "ok" if report.acceptable(max_bad_fraction) else "FAIL"
    lines.append(
        f"{report.path}: rows_total={report.rows_total} rows_ok={report.rows_ok} rows_bad={report.rows_bad} "
        f"bad_fraction={report.bad_fraction:.4f} max_bad_fraction={max_bad_fraction:g} {verdict}"
    )
    return "\n".join(lines)


def load_problems(
    source: str, num_problems: int, seed: int, fields, max_bad_fraction: float = 0.1
) -> list[Problem]:
    """The run's problems: the built-in set, or a JSONL/Parquet file or Hugging Face dataset
    (``hf:ORG/NAME[:CONFIG][:SPLIT]``) validated row by row."""
    if source == "builtin:arithmetic":
        return builtin_arithmetic(num_problems, seed)
    if source in ("builtin:chains", "builtin:totals"):  # the demo tasks, solved by rewriting (pope.problems)
        return builtin_chains(num_problems, seed, task=source.removeprefix("builtin:"))
    if source == "builtin:arithmetic-easy":  # one operation: the tiny model's easy set
        return [
            Problem(
                p.problem_id.replace("arith", "easy"),
                p.problem,
                p.answer,
                p.solution_steps,
                "builtin:arithmetic-easy",
            )
            for p in builtin_arithmetic(num_problems, seed + 1, min_ops=1, max_ops=1)
        ]
    if not source.startswith("hf:") and not Path(source).is_file():
        raise DataError(f"data.source {source!r}: not builtin:..., not hf:ORG/NAME and not an existing file")
    problems, _report = load_source(source, fields, max_bad_fraction)
    return problems


def run_problems(data, seed: int, easy: bool = False) -> list[Problem]:
    """The hard (or, with ``easy``, the easy) problems a run's ``DataConfig`` names."""
    fields = FieldMap(data.problem_field, data.answer_field, data.solution_field, data.id_field)
    source = data.easy_source if easy else data.source
    return load_problems(source, data.num_problems, seed, fields, data.max_bad_fraction)

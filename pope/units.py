"""Oracle solutions split into units: sentences or steps.

A guided prompt shows the first ``i`` units of an oracle solution. Units are cut losslessly:

- ``"".join(split_units(text)) == text`` exactly, and ``prefix(text, i)`` is the first ``i`` units
  joined; every unit keeps its trailing whitespace (the newline or the blank line after it).
- No unit is empty or whitespace only (whitespace at the start of the text joins the first unit).
- A boundary never falls inside math or an environment: ``$...$``, ``$$...$$``, ``\\[...\\]``,
  ``\\(...\\)``, ``\\begin{env}...\\end{env}`` (nested environments of the same name counted). An
  escaped ``\\$`` is no delimiter; ``\\\\[2pt]`` is a line break, not display math. An opener that
  is never closed protects the rest of the text (a truncated solution stays one unit there).
  An Asymptote figure ``[asy]...[/asy]`` (MATH solutions have them) is protected the same way.

Boundaries, all outside math, each placed after the whitespace run that follows:

- a paragraph break: a whitespace run holding a blank line;
- a sentence end: ``.``, ``?`` or ``!`` (optionally followed by ``)``, quotes) and then whitespace;
  math whose content ends with a period (``$$x = 1.$$ Then``) ends a sentence too.

Not a sentence end: a period after an abbreviation (``e.g.``, ``i.e.``, ``Fig.``, ...), the last dot
of an ellipsis, the period of an enumerator that is the whole unit so far (``1.``, ``(a)``,
``Step 2.``), ``!`` after a digit or ``)`` (a factorial). A decimal such as ``3.14`` is never cut
since no whitespace follows its point.

A header alone (``### Solution``, ``**Solution:**``) is no step of the solution: ``merge_headers``
joins it to the unit after it, so a guided prompt never shows a header as its whole prefix.
"""

from __future__ import annotations

import bisect
import re
from itertools import pairwise

_ENV_BEGIN = re.compile(r"\\begin\{([^{}]*)\}")
_CLOSERS = ")\"'\u201d\u2019"
_ABBREVIATIONS = (
    r"[eE]\.g|[iI]\.e|cf|vs|viz|resp|approx|Figs?|figs?|Eqs?|eqs?|Thm|Lem|Prop|Cor|Def|Sec|Ch|Ex"
    r"|Mrs?|Ms|Dr|Prof|St|al|pp"
)
_ABBREVIATION_END = re.compile(rf"(?<![A-Za-z.])(?:{_ABBREVIATIONS})\.\Z")
_ENUMERATOR = re.compile(r"\(?(?:(?:Step|Case|Part|Claim|Lemma)\s*)?(?:\d+|[A-Za-z]|[ivx]+|[IVX]+)\)?")
_ABBREVIATION_WINDOW_CHARS = 12  # longest abbreviation plus its period and one char before it


def _find_closer(text: str, start: int, closer: str) -> tuple[int, int]:
    """(index of the closer, index just after it) from ``start``; (len, len) when never closed."""
    i = start
    while i < len(text):
        if text.startswith(closer, i):
            return i, i + len(closer)
        i += 2 if text[i] == "\\" else 1  # an escape (\$, \\) is never a closer
    return len(text), len(text)


def _find_env_end(text: str, start: int, name: str) -> tuple[int, int]:
    """(index of the matching ``\\end{name}``, index just after it), nesting counted."""
    token = re.compile(r"\\(begin|end)\{" + re.escape(name) + r"\}")
    depth = 1
    for match in token.finditer(text, start):
        depth += 1 if match.group(1) == "begin" else -1
        if depth == 0:
            return match.start(), match.end()
    return len(text), len(text)


def protected_spans(text: str) -> list[tuple[int, int, int]]:
    """Math and environment spans as (start, content_end, end), sorted and disjoint.

    ``text[start:end]`` is the whole span with its delimiters; ``content_end`` is where its closing
    delimiter starts (``end`` when unclosed).
    """
    spans = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            pair = text[i : i + 2]
            env = _ENV_BEGIN.match(text, i)
            if pair in ("\\[", "\\("):
                content_end, end = _find_closer(text, i + 2, "\\]" if pair == "\\[" else "\\)")
            elif env:
                content_end, end = _find_env_end(text, env.end(), env.group(1))
            else:
                i += 2  # an escaped character, including \\ and \$
                continue
        elif char == "$":
            opener = "$$" if text.startswith("$$", i) else "$"
            content_end, end = _find_closer(text, i + len(opener), opener)
        elif text.startswith("[asy]", i):  # an Asymptote figure (MATH solutions): code, not sentences
            content_end, end = _find_closer(text, i + 5, "[/asy]")
        else:
            i += 1
            continue
        spans.append((i, content_end, end))
        i = end
    return spans


def _math_ends_sentence(text: str, span: tuple[int, int, int]) -> bool:
    content = text[span[0] : span[1]].rstrip()
    return content.endswith(".") and not content.endswith("..")


def _ends_sentence(text: str, unit_start: int, ws_start: int, spans_by_end: dict) -> bool:
    """Whether the text just before the whitespace run at ``ws_start`` ends a sentence."""
    k = ws_start
    while k > unit_start and k not in spans_by_end and text[k - 1] in _CLOSERS:
        k -= 1
    if k in spans_by_end:
        return _math_ends_sentence(text, spans_by_end[k])
    if k <= unit_start:
        return False
    mark = text[k - 1]
    if mark == "?":
        return True
    if mark == "!":
        return k - 2 < unit_start or not (text[k - 2].isdigit() or text[k - 2] == ")")
    if mark != ".":
        return False
    if text[k - 2 : k - 1] == ".":  # an ellipsis
        return False
    window = text[max(0, k - _ABBREVIATION_WINDOW_CHARS) : k]
    if _ABBREVIATION_END.search(window):
        return False
    return not _ENUMERATOR.fullmatch(text[unit_start : k - 1].strip())


def unit_boundaries(text: str) -> list[int]:
    """Cut positions, strictly increasing, each in 1..len(text)-1 (see the module docstring)."""
    spans = protected_spans(text)
    starts = [span[0] for span in spans]
    spans_by_end = {span[2]: span for span in spans}
    cuts = []
    unit_start = 0
    for run in re.finditer(r"\s+", text):
        ws_start, ws_end = run.span()
        if ws_end == len(text) or ws_start == unit_start:
            continue
        index = bisect.bisect_right(starts, ws_start) - 1
        if index >= 0 and ws_start < spans[index][2]:
            continue  # whitespace inside math; runs never straddle a span's edge (delimiters are not spaces)
        paragraph = run.group().count("\n") >= 2
        if paragraph or _ends_sentence(text, unit_start, ws_start, spans_by_end):
            cuts.append(ws_end)
            unit_start = ws_end
    return cuts


def split_units(text: str) -> list[str]:
    """The text as sentence/step units; ``"".join(split_units(text)) == text``; ``[]`` for ``""``."""
    if not text:
        return []
    cuts = [0, *unit_boundaries(text), len(text)]
    return [text[a:b] for a, b in pairwise(cuts)]


def prefix(text: str, num_units: int) -> str:
    """The first ``num_units`` units of ``text`` joined, exactly as written."""
    units = split_units(text)
    if not 0 <= num_units <= len(units):
        raise ValueError(f"num_units={num_units}: the text has {len(units)} units")
    return "".join(units[:num_units])


_HEADER = re.compile(r"\s*(?:#{1,6}[ \t]+[^\n]*|\*\*[^*\n]+\*\*:?|__[^_\n]+__:?|[A-Z][a-z]+(?: \d+)?:)\s*")


def is_header(unit: str) -> bool:
    """A unit that only titles what follows: a Markdown heading, a bold line, or ``Solution:``."""
    return bool(_HEADER.fullmatch(unit))


def merge_headers(units: list[str]) -> list[str]:
    """``units`` with each header-only unit joined to the unit after it (a trailing header stays);
    the join of the result is the join of ``units``."""
    out: list[str] = []
    carry = ""
    for unit in units:
        if is_header(unit):
            carry += unit
            continue
        out.append(carry + unit)
        carry = ""
    if carry:
        if out:
            out[-1] += carry
        else:
            out.append(carry)
    return out

"""Versioned instructions. A run records the version it used; a changed text is a new version,
never an edit of an old one, so results stay comparable. No imports: config uses it.

A version holds system instructions (``unguided``, ``guided``) and the header of a prefix placed at
the end of the user turn; or, with ``user_template`` / ``user_template_guided``, user turns built
from ``{problem}`` (and ``{prefix}``) and no system turn at all."""

from __future__ import annotations

INSTRUCTIONS: dict[str, dict[str, str]] = {
    "pope-v1": {
        "unguided": "Solve the problem. Put the final answer in \\boxed{}.",
        "guided": (
            "The text after the problem is the beginning of a correct solution. Continue it from where it "
            "stops and put the final answer in \\boxed{}."
        ),
        # where the prefix sits in the user turn (prefix_placement=user_end), this header precedes it
        "prefix_header": "\n\nBeginning of a solution:\n",
    },
    # one instruction for guided and unguided prompts: a guided prompt is the unguided prompt plus the
    # oracle prefix at the start of the assistant turn, nothing else (the v2 testbed's principle 1)
    "pope-same-v1": {
        "unguided": "Solve the problem. Put the final answer in \\boxed{}.",
        "guided": "Solve the problem. Put the final answer in \\boxed{}.",
        "prefix_header": "\n\nBeginning of a solution:\n",
    },
    # the template the paper's authors circulate for guided prompts: problem and partial response in the
    # user turn, no system turn (DESIGN.md section 5); unguided, the same user turn without the prefix.
    # Used with prefix_placement: user_end. The wording is ours where the circulated one is not quoted.
    "paper-v1": {
        "unguided": "",
        "guided": "",
        "prefix_header": "",
        "user_template": "{problem}\n\nSolve the problem step by step. Put your final answer within \\boxed{{}}.",
        "user_template_guided": (
            "You are given a problem and a partial solution.\n\nProblem:\n{problem}\n\nPartial Response:\n{prefix}"
            "\n\nContinue solving the problem, starting from where the partial response ends. Put your final "
            "answer within \\boxed{{}}."
        ),
    },
}

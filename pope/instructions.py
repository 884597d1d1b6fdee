"""Versioned system instructions. A run records the version it used; a changed text is a new
version, never an edit of an old one, so results stay comparable. No imports: config uses it."""

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
}

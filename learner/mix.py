"""Each learner step's groups, in the mix's exact proportions, whatever order the actors deliver them in.

    train stream ──> StepMix.offer ──> held per variant (or per pair) ──> take(): quota[v] of each v

The sampler produces each block of ``groups_per_step`` positions in the mix's exact counts
(pope/prompts.py ``variant_quota``), but actors finish at different speeds, so a step's arrivals
are not balanced; the learner holds the surplus of one variant for the next step. With pairs
(``data.pair_variants``) a problem's unguided and guided groups are trained in the same step.

Held groups stay unacknowledged in the train stream, so a learner that dies holding them gets
them back on resume: nothing held is lost.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepMix:
    quota: dict[str, int]  # variant -> groups per step
    paired: bool = False
    _single: dict[str, deque] = field(default_factory=dict)
    _pairs: OrderedDict = field(default_factory=OrderedDict)  # pair -> {variant: item}

    @property
    def size(self) -> int:
        return sum(self.quota.values())

    def accepts(self, variant: str) -> bool:
        return variant in self.quota

    def offer(self, variant: str, pair: int | None, item: Any) -> None:
        """Hold ``item`` (any payload: the learner's (entry id, group)) until a step takes it."""
        if not self.accepts(variant):
            raise ValueError(f"variant {variant!r} is not in this run's mix {self.quota}")
        if self.paired and variant in ("unguided", "guided"):
            if pair is None:
                raise ValueError(f"a {variant} group without a pair id, but data.pair_variants is set")
            self._pairs.setdefault(pair, {})[variant] = item
        else:
            self._single.setdefault(variant, deque()).append(item)

    def _complete_pairs(self) -> list[int]:
        return [key for key, members in self._pairs.items() if len(members) == 2]

    def ready(self) -> bool:
        for variant, n in self.quota.items():
            if self.paired and variant in ("unguided", "guided"):
                if len(self._complete_pairs()) < n:
                    return False
            elif len(self._single.get(variant, ())) < n:
                return False
        return True

    def missing(self) -> dict[str, int]:
        """Per variant, how many more groups the next step needs (for error messages)."""
        out = {}
        for variant, n in self.quota.items():
            have = (
                len(self._complete_pairs())
                if self.paired and variant in ("unguided", "guided")
                else len(self._single.get(variant, ()))
            )
            if have < n:
                out[variant] = n - have
        return out

    def take(self) -> list[Any]:
        """One step's items: pairs first (oldest first), then each variant's oldest singles."""
        assert self.ready(), "take() before ready()"
        items: list[Any] = []
        if self.paired and "guided" in self.quota:
            for key in self._complete_pairs()[: self.quota["guided"]]:
                members = self._pairs.pop(key)
                items += [members["unguided"], members["guided"]]
        for variant, n in self.quota.items():
            if self.paired and variant in ("unguided", "guided"):
                continue
            queue = self._single[variant]
            items += [queue.popleft() for _ in range(n)]
        return items

    def held(self) -> int:
        return sum(len(q) for q in self._single.values()) + sum(len(m) for m in self._pairs.values())

"""The buffer's books: stream upkeep during a run, and where every group ended at its end.

    during the run:  trim what each consumer group acknowledged; count what waits to be trained
    at the end:      every group id generated ──> exactly one outcome:
                     trained | skipped (learner, with reason) | in flight at stop
                     | dead-lettered (with reason) | lost

Generated is the ledger ``pope:<run_id>:generated`` (written in the same MULTI as each rollouts
entry; trimming does not touch it), plus what the actors' own stats say they wrote: a group Redis
lost after acknowledging its XADD is in the stats but nowhere else, and counts as lost.

An id can show up in several places (a group scored twice after a worker died is trained once and
its second copy skipped as a duplicate or dead-lettered); its outcome is the first that applies in
the order above, so the outcomes add up to the groups generated, and the copies are counted apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from broker.schemas import DeadLetter, DecodeError, Message, RolloutGroup, ScoredGroup, decode
from broker.streams import FIELD, GROUPS, _s, ledger_key, stream_health, stream_key

OUTCOMES = ("trained", "skipped", "in_flight", "dead_lettered", "lost")


def read_all(client: redis.Redis, run_id: str, stream: str) -> list[tuple[str, Message]]:
    """Every decodable entry of a stream, oldest first (for accounting at the end of a run)."""
    out = []
    for raw_id, fields in client.xrange(stream_key(run_id, stream)):
        try:
            out.append((_s(raw_id), decode(fields[FIELD])))
        except DecodeError:
            continue  # counted by the consumer that dead-letters it
    return out


def generated_ids(client: redis.Redis, run_id: str) -> set[str]:
    """Every group id ever written to the rollouts stream (the ledger; trimming does not touch it)."""
    return {_s(m) for m in client.sscan_iter(ledger_key(run_id), count=10_000)}


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def trim_acknowledged(client: redis.Redis, run_id: str, stream: str) -> int:
    """Delete the entries of ``stream`` its consumer group has acknowledged; returns how many.

    Kept: every entry at or after the oldest pending one, and every entry after the group's
    last-delivered id (never delivered). Everything older was delivered and acknowledged, so
    XTRIM MINID removes exactly that. The group only moves forward, so a bound computed a moment
    ago is conservative. Entries trimmed this way are not ``lost``: the group had read them."""
    key = stream_key(run_id, stream)
    group = GROUPS[stream]
    info = next((g for g in client.xinfo_groups(key) if _s(g["name"]) == group), None)
    if info is None:
        return 0
    keep_from = _next_id(_s(info["last-delivered-id"]))
    summary = client.xpending(key, group)
    if summary and summary.get("pending"):
        oldest_pending = _s(summary["min"])
        if tuple(map(int, oldest_pending.split("-"))) < tuple(map(int, keep_from.split("-"))):
            keep_from = oldest_pending
    if keep_from == "0-1":
        return 0
    return int(client.xtrim(key, minid=keep_from, approximate=False))


def unacked_ids(client: redis.Redis, run_id: str, stream: str) -> set[str]:
    """Entry ids the stream's group has not acknowledged: pending ones and never-delivered ones."""
    key = stream_key(run_id, stream)
    group = GROUPS[stream]
    info = next(g for g in client.xinfo_groups(key) if _s(g["name"]) == group)
    ids = {_s(e["message_id"]) for e in client.xpending_range(key, group, "-", "+", count=1_000_000)}
    ids |= {_s(raw_id) for raw_id, _ in client.xrange(key, min="(" + _s(info["last-delivered-id"]), max="+")}
    return ids


class StreamUpkeep:
    """What the launcher does to the streams while the run goes on: trim what every consumer group
    acknowledged (every ``trim_every_s``; 0 never), counting it, and count the groups waiting."""

    def __init__(self, client: redis.Redis, run_id: str, trim_every_s: float):
        self.client, self.run_id, self.trim_every_s = client, run_id, trim_every_s
        self.trimmed = {"rollouts": 0, "train": 0}
        self._last_trim = time.monotonic()

    def trim(self, force: bool = False) -> None:
        if not self.trim_every_s or (not force and time.monotonic() - self._last_trim < self.trim_every_s):
            return
        self._last_trim = time.monotonic()
        for stream in self.trimmed:
            self.trimmed[stream] += trim_acknowledged(self.client, self.run_id, stream)

    def waiting(self) -> tuple[int, int]:
        return groups_waiting(self.client, self.run_id)


def groups_waiting(client: redis.Redis, run_id: str) -> tuple[int, int]:
    """Groups waiting to be trained (the buffer lag), and of those the unscored: rollouts lag +
    pending, plus scored but unread (train lag); trained entries pending until the next checkpoint
    are not waiting."""
    unscored = stream_health(client, run_id, "rollouts").in_flight
    return unscored + stream_health(client, run_id, "train").lag, unscored


def _group_id(message: Message) -> str | None:
    if isinstance(message, RolloutGroup):
        return message.group_id
    if isinstance(message, ScoredGroup):
        return message.group.group_id
    return None


def dead_letters(client: redis.Redis, run_id: str) -> list[tuple[str | None, str]]:
    """(group id or None when the payload names none, reason) of every dead letter of the run."""
    out = []
    for _, letter in read_all(client, run_id, "dead"):
        if not isinstance(letter, DeadLetter):
            continue
        try:
            group_id = _group_id(decode(letter.payload))
        except DecodeError:
            group_id = None
        out.append((group_id, letter.reason))
    return out


@dataclass
class GroupAccount:
    """Every generated group id with its one outcome (and the reason, where there is one)."""

    generated: set[str]
    outcome: dict[str, str]  # group id -> one of OUTCOMES
    reasons: dict[str, str]  # group id -> why, for skipped and dead-lettered ones
    trained_copies: int  # trainings beyond the first of one group id (exactly-once: 0)
    letters: dict[str, int] = field(default_factory=dict)  # dead letters by reason, copies included
    letters_without_group: int = 0  # dead letters whose payload names no group (undecodable)

    def ids(self, outcome: str) -> list[str]:
        return sorted(gid for gid, o in self.outcome.items() if o == outcome)

    def by_reason(self, outcome: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for gid in self.ids(outcome):
            out.setdefault(self.reasons[gid], []).append(gid)
        return out

    def counts(self) -> dict[str, int]:
        return {o: len(self.ids(o)) for o in OUTCOMES}


def account_groups(
    client: redis.Redis,
    run_id: str,
    trained: list[str],
    skipped: dict[str, list[str]],
    written_by_actors: set[str],
) -> GroupAccount:
    """Where each group of the run ended. ``trained``: the learner's trained group ids (a repeat
    is a copy trained twice); ``skipped``: its set-aside ids by reason; ``written_by_actors``: the
    ids the actors' stats say they wrote."""
    generated = generated_ids(client, run_id) | written_by_actors
    in_flight: set[str] = set()
    for stream in GROUPS:
        unacked = unacked_ids(client, run_id, stream)
        for entry_id, msg in read_all(client, run_id, stream):
            group_id = _group_id(msg)
            if stream == "rollouts" and group_id is not None:
                generated.add(group_id)  # written, but the ledger lost it (a Redis restart)
            if entry_id in unacked and group_id is not None:
                in_flight.add(group_id)
    letters = dead_letters(client, run_id)
    by_reason: dict[str, int] = {}
    for _, reason in letters:
        by_reason[reason] = by_reason.get(reason, 0) + 1

    outcome: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for gid in trained:
        outcome[gid] = "trained"
    for reason, ids in skipped.items():
        for gid in ids:
            if gid not in outcome:
                outcome[gid], reasons[gid] = "skipped", reason
    for gid in in_flight:  # a copy is still to be read: a resumed run may train it
        outcome.setdefault(gid, "in_flight")
    for gid, reason in letters:
        if gid is not None and gid not in outcome:
            outcome[gid], reasons[gid] = "dead_lettered", reason
    for gid in generated:
        outcome.setdefault(gid, "lost")
    return GroupAccount(
        generated=generated,
        outcome=outcome,
        reasons=reasons,
        trained_copies=len(trained) - len(set(trained)),
        letters=by_reason,
        letters_without_group=sum(1 for gid, _ in letters if gid is None),
    )

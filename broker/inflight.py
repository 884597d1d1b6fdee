"""The pool-wide in-flight bound: how many groups are ahead of the learner, counted across every actor.

    actor engines ──> rollouts stream ──> preprocess ──> train stream ──> learner: its step's batch
    └─ generating ─┘  └── lag + pending ──────────┘   └─── lag ───┘      (not counted), its surplus
                                                                          (counted, field "learner")

A group counts from the moment an actor reserves it (before it is submitted to the engine) until
the learner reads it from the train stream. The learner's own batch (read, not yet acknowledged)
does not count, so generation overlaps the learner's step; with ``broker.max_groups_in_flight`` =
``learner.groups_per_step`` the pool holds at most the next step's data, so a trained group started
at most one version before the one the learner trains it at.

Each actor's count lives in one hash ``pope:<run_id>:generating``, field = actor id, value
``"<count> <server ms>"``: the groups it reserved and has not written. The learner's field
(``learner``) is its mix's surplus: groups it read beyond the step it took (a variant the step had
enough of), held for the next step; they are ahead of its batch, so they count too. Every operation is one Lua
script (one round trip, atomic): ``reserve`` takes up to n of the room left and adds them to the
caller's count; ``Producer.put`` takes one off in the MULTI of its XADD (the group moves from the
engine to the stream in one step, never counted twice or not at all). Fields not refreshed for
``stale_s`` (server clock) are left out of the others' counts: an actor's keepalive refreshes its own
every ``metrics.progress_interval_s``; a killed actor's count is reset when Ray restarts it, a
resized-away one removes its own, and one that dies for good (or hangs: its keepalive stops) is
ignored ``stale_s`` after its last refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from broker.streams import GROUPS, stream_key


def generating_key(run_id: str) -> str:
    """Hash of each actor's groups reserved and not yet written: field = actor id, ``"<count> <ms>"``."""
    return f"pope:{run_id}:generating"


# KEYS: rollouts, train, generating hash. ARGV: producer, wanted (0: count only), bound, stale ms.
# Returns {rollouts lag, rollouts pending, train lag, others' live counts, own count, granted}.
_RESERVE = """
local function field(reply, name)
    for i = 1, #reply, 2 do
        if reply[i] == name then return reply[i + 1] end
    end
end
local function group_counts(key, group)
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
        if field(g, 'name') == group then
            local lag = field(g, 'lag')
            if not lag then  -- Redis 6.2, or a lag it could not keep: count the undelivered entries
                lag = #redis.call('XRANGE', key, '(' .. field(g, 'last-delivered-id'), '+')
            end
            return tonumber(lag), tonumber(field(g, 'pending'))
        end
    end
    error('consumer group ' .. group .. ' of ' .. key .. ' does not exist')
end
local rollouts_lag, rollouts_pending = group_counts(KEYS[1], 'preprocess')
local train_lag = group_counts(KEYS[2], 'learner')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local others, own = 0, 0
local fields = redis.call('HGETALL', KEYS[3])
for i = 1, #fields, 2 do
    local count, stamp = string.match(fields[i + 1], '(%d+) (%d+)')
    if fields[i] == ARGV[1] then
        own = tonumber(count)
    elseif now - tonumber(stamp) <= tonumber(ARGV[4]) then
        others = others + tonumber(count)
    end
end
local room = tonumber(ARGV[3]) - (rollouts_lag + rollouts_pending + train_lag + others + own)
local granted = math.max(0, math.min(tonumber(ARGV[2]), room))
if granted > 0 then
    own = own + granted
    redis.call('HSET', KEYS[3], ARGV[1], own .. ' ' .. now)
end
return {rollouts_lag, rollouts_pending, train_lag, others, own, granted}
"""

# KEYS: generating hash. ARGV: producer, delta (negative: written or dropped), reset (1: count := delta).
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = 0
if ARGV[3] ~= '1' then
    local old = redis.call('HGET', KEYS[1], ARGV[1])
    if old then count = tonumber(string.match(old, '(%d+)')) end
end
count = math.max(0, count + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], count .. ' ' .. now)
return count
"""


@dataclass(frozen=True)
class PoolCount:
    """What is ahead of the learner, in groups, as one ``reserve`` saw it."""

    rollouts_lag: int  # written, not yet read by preprocess
    rollouts_pending: int  # being scored
    train_lag: int  # scored, not yet read by the learner
    others: int  # in the other actors' engines (their live fields)
    own: int  # in the caller's engine, after the reservation
    granted: int  # groups this call reserved

    @property
    def total(self) -> int:
        return self.rollouts_lag + self.rollouts_pending + self.train_lag + self.others + self.own


class PoolBound:
    """One actor's side of the pool-wide bound (module docstring); ``max_in_flight`` None: unbounded,
    yet the actor's count is still kept (the others' bound, if any, sees it)."""

    def __init__(
        self, client: redis.Redis, run_id: str, producer: str, max_in_flight: int | None, stale_s: float
    ):
        self.client, self.producer = client, producer
        self.max_in_flight = max_in_flight
        self.stale_ms = int(stale_s * 1000)
        self.keys = [stream_key(run_id, "rollouts"), stream_key(run_id, "train"), generating_key(run_id)]
        assert GROUPS["rollouts"] == "preprocess" and GROUPS["train"] == "learner"  # as the script reads them
        self.wait_s = 0.0  # total time spent waiting for room
        self._reserve = client.register_script(_RESERVE)
        self._adjust = client.register_script(_ADJUST)

    def count(self, wanted: int = 0) -> PoolCount:
        """The pool's groups ahead of the learner; with ``wanted``, reserve up to that many of the
        room left (atomically: two actors never take the same room)."""
        bound = self.max_in_flight if self.max_in_flight is not None else 2**62
        reply = self._reserve(keys=self.keys, args=[self.producer, wanted, bound, self.stale_ms])
        return PoolCount(*(int(x) for x in reply))

    def reserve(self, wanted: int) -> int:
        """Up to ``wanted`` groups of the room left, now counted as this actor's; 0 when full."""
        return self.count(wanted).granted

    def acquire(
        self,
        wanted: int,
        should_stop: Callable[[], bool] = lambda: False,
        poll_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """Wait until some room is free, then reserve up to ``wanted``; 0 if asked to stop meanwhile."""
        start = time.monotonic()
        try:
            while not (granted := self.reserve(wanted)):
                if should_stop():
                    return 0
                sleep(poll_s)
            return granted
        finally:
            self.wait_s += time.monotonic() - start

    def release(self, n: int = 1, client=None) -> None:
        """``n`` of this actor's groups left its engine (written, or dropped); ``client`` a pipeline to
        do it in (``Producer.put``: the MULTI of the XADD)."""
        self._adjust(keys=self.keys[2:], args=[self.producer, -n, 0], client=client or self.client)

    def reset(self, count: int = 0) -> None:
        """Count ``count`` (0: an actor (re)starting holds nothing in its engine, whatever its last life
        left; the learner: the groups its mix holds beyond the step it took)."""
        self._adjust(keys=self.keys[2:], args=[self.producer, count, 1])

    def refresh(self) -> None:
        """The field's stamp is now (the keepalive's beat): the others keep counting it."""
        self._adjust(keys=self.keys[2:], args=[self.producer, 0, 0])

    def leave(self) -> None:
        """The actor stops: its field goes."""
        self.client.hdel(self.keys[2], self.producer)

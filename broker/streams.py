"""Redis Streams as the pipeline's buffer: a producer/consumer pair per stream.

    actors ──XADD──> rollouts ──XREADGROUP "preprocess"──> preprocess ──XADD──> train
    train ──XREADGROUP "learner"──> learner ──XADD──> control (weights, step reports, stop)
    any consumer ──XADD──> dead (entries it could not process, with the reason)

Invariants:
- Every key carries the run id: ``pope:<run_id>:<stream>``.
- A consumer acknowledges an entry only after its output is written downstream, so an entry is
  either acknowledged (done) or still pending/undelivered (in flight); never silently gone.
- Backpressure is the producer waiting while the consumer group's lag plus its pending entries
  reach ``max_in_flight`` (the actors wait on the pool-wide count instead: ``broker.inflight``).
  ``maxlen`` is only an emergency cap; the entries it trims before they were acknowledged are counted (``cap_key``) and show up as ``lost``.
- Every group id written to the rollouts stream is also added, in the same MULTI, to the set
  ``pope:<run_id>:generated`` (the ledger), so entries that every consumer acknowledged can be
  trimmed (``broker.accounting.trim_acknowledged``) while the end-of-run accounting stays exact.
- A Redis call that fails on the connection is retried with backoff for at most
  ``reconnect_timeout_s`` (a restarted server is found again), then fails with ``RedisUnavailable``,
  which names Redis and its address; never a loop that retries forever.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from broker.schemas import DeadLetter, DecodeError, Message, decode, encode

FIELD = b"m"
STREAMS = ("rollouts", "train", "control", "dead")
GROUPS = {"rollouts": "preprocess", "train": "learner"}


def stream_key(run_id: str, stream: str) -> str:
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; streams are {STREAMS}")
    return f"pope:{run_id}:{stream}"


def ledger_key(run_id: str) -> str:
    """The set of every group id written to the rollouts stream (exact, survives trimming)."""
    return f"pope:{run_id}:generated"


def cap_key(run_id: str, stream: str) -> str:
    """Hash of what the emergency cap removed from ``stream`` before its group acknowledged it:
    ``undelivered`` (never read) and ``pending`` (read, not acknowledged). Both are lost."""
    return f"{stream_key(run_id, stream)}:capped"


# The emergency cap (broker.emergency_maxlen), applied after an XADD that took the stream past it:
# trim the oldest entries to the cap and count those the group had not acknowledged. Only the
# server sees the removed entries; nothing crosses the network but two numbers.
_CAP = """
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return {0, 0} end
local victims = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
local last_victim = victims[#victims][1]
local last_delivered = '0-0'
local function field(reply, name)
    for i = 1, #reply, 2 do
        if reply[i] == name then return reply[i + 1] end
    end
end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    if field(g, 'name') == ARGV[2] then last_delivered = field(g, 'last-delivered-id') end
end
local function after(a, b)
    local am, as = string.match(a, '(%d+)-(%d+)')
    local bm, bs = string.match(b, '(%d+)-(%d+)')
    am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
    return am > bm or (am == bm and as > bs)
end
local undelivered = 0
for _, v in ipairs(victims) do
    if after(v[1], last_delivered) then undelivered = undelivered + 1 end
end
-- from the first victim on: entries trimmed earlier stay in the pending list until acknowledged
local pending = #redis.call('XPENDING', KEYS[1], ARGV[2], victims[1][1], last_victim, excess)
redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[1])
-- the removed entries will never be read: count them as read, so the group's lag stays exact
if undelivered > 0 then
    local left = #redis.call('XRANGE', KEYS[1], '(' .. last_delivered, '+')
    local added = field(redis.call('XINFO', 'STREAM', KEYS[1]), 'entries-added')
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[2], last_delivered, 'ENTRIESREAD', added - left)
end
redis.call('HINCRBY', KEYS[2], 'undelivered', undelivered)
redis.call('HINCRBY', KEYS[2], 'pending', pending)
return {undelivered, pending}
"""


def sampler_key(run_id: str) -> str:
    """Hash of the run's sampler positions (``PositionClaims``): ``__next__`` the next position to
    hand out; per producer, ``<name>:claim`` its last claim ("start stop") and ``<name>`` its next
    unwritten position (set with each group it writes)."""
    return f"pope:{run_id}:sampler"


def sampler_position(client, run_id: str, producer: str) -> int:
    """The producer's next unwritten position (0 before its first group)."""
    return int(client.hget(sampler_key(run_id), producer) or 0)


# a producer's claims: ranges "start stop start stop ..." in claim order (rising); those wholly below
# its next unwritten position are dropped; with none left, the marker moves to the new claim
_CLAIM = """
local n = tonumber(ARGV[2])
local stop = redis.call('HINCRBY', KEYS[1], '__next__', n)
local start = stop - n
local written = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or start)
local kept = {}
local old = redis.call('HGET', KEYS[1], ARGV[1] .. ':claim')
if old then
  for s, e in string.gmatch(old, '(%d+) (%d+)') do
    if tonumber(e) > written then table.insert(kept, s .. ' ' .. e) end
  end
end
if #kept == 0 then redis.call('HSET', KEYS[1], ARGV[1], start) end
table.insert(kept, start .. ' ' .. stop)
redis.call('HSET', KEYS[1], ARGV[1] .. ':claim', table.concat(kept, ' '))
return start
"""


class PositionClaims:
    """The run's sampler positions, handed out from one counter in ``sampler_key``.

    ``claim(producer, n)`` takes the next n positions for ``producer`` (atomically: one Lua script);
    a producer may hold several claims at once (a continuous actor claims more before the last is
    written), and writes its groups in position order. ``Producer.put`` records, with each group,
    the position after it (the producer's next unwritten position). ``unfinished(producer)`` is what
    a restarted producer claimed and never wrote: it asks those first, so every position is written
    exactly once, a restart included."""

    def __init__(self, client: redis.Redis, run_id: str):
        self.client, self.key = client, sampler_key(run_id)
        self._script = client.register_script(_CLAIM)

    def claim(self, producer: str, n: int) -> range:
        start = int(self._script(keys=[self.key], args=[producer, n]))
        return range(start, start + n)

    def unfinished(self, producer: str) -> list[int]:
        claim, written = self.client.hmget(self.key, [f"{producer}:claim", producer])
        if claim is None:
            return []
        bounds = [int(x) for x in _s(claim).split()]
        after = int(written) if written is not None else bounds[0]
        return [
            p
            for start, stop in zip(bounds[::2], bounds[1::2], strict=True)
            for p in range(max(start, after), stop)
        ]

    def claimed(self) -> int:
        """Positions handed out so far (all producers)."""
        return int(self.client.hget(self.key, "__next__") or 0)


def stage_files(client: redis.Redis, run_id: str, name: str, files: dict[str, bytes]) -> str:
    """Put a folder's files (e.g. a built-in model) where every node of the run can fetch them:
    one hash ``pope:<run_id>:files:<name>``; returns its key."""
    key = f"pope:{run_id}:files:{name}"
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping=files)
    pipe.execute()
    return key


def fetch_files(client: redis.Redis, key: str) -> dict[str, bytes]:
    return {_s(name): data for name, data in client.hgetall(key).items()}


class RedisUnavailable(redis.ConnectionError):
    """Redis did not answer within the reconnect budget (``broker.reconnect_timeout_s``)."""


def redacted(url: str) -> str:
    """``url`` without its password: safe to print."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class BoundedRetry(Retry):
    """Retry a Redis call on connection errors and timeouts for at most ``budget_s`` seconds, with
    exponential backoff (0.1 s doubling, capped at 2 s), then raise ``RedisUnavailable``.

    A deadline rather than a count of tries: redis-py nests retries (a command's retry reconnects,
    and the reconnect retries too), so a count multiplies; a deadline does not (the inner call that
    spends the budget raises ``RedisUnavailable``, which the outer one passes on at once)."""

    def __init__(self, budget_s: float, address: str):
        super().__init__(
            ExponentialBackoff(cap=2.0, base=0.1),
            retries=1_000_000,  # bounded by the deadline below
            supported_errors=(redis.ConnectionError, redis.TimeoutError, socket.timeout),
        )
        self.budget_s = budget_s
        self.address = address
        self.tries_failed = 0  # counted across calls: a metric of how often the connection failed

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        deadline = time.monotonic() + self.budget_s
        failures = 0
        while True:
            try:
                return do()
            except self._supported_errors as error:  # deliberate: reconnecting is this class's job
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                self.tries_failed += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if isinstance(error, RedisUnavailable):  # a nested call already spent the budget
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RedisUnavailable(
                        f"Redis at {self.address} did not answer for {self.budget_s:g}s "
                        f"({failures} tries; broker.reconnect_timeout_s): {error}"
                    ) from error
                time.sleep(min(self._backoff.compute(failures), remaining))


def connect(url: str, socket_timeout_s: float = 30.0, reconnect_timeout_s: float = 60.0) -> redis.Redis:
    """A client with bounded timeouts; a call that fails on the connection reconnects and retries
    for at most ``reconnect_timeout_s``, then raises ``RedisUnavailable`` naming the server."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(10.0, reconnect_timeout_s),
        retry=BoundedRetry(reconnect_timeout_s, redacted(url)),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
    )


@dataclass(frozen=True)
class StreamHealth:
    length: int  # entries now in the stream
    lag: int  # entries added but not yet delivered to the group
    pending: int  # delivered, not yet acknowledged
    lost: int  # entries trimmed before the group read them

    @property
    def in_flight(self) -> int:
        return self.lag + self.pending


def ensure_groups(client: redis.Redis, run_id: str) -> None:
    """Create the consumer groups (and their streams) once; idempotent."""
    for stream, group in GROUPS.items():
        try:
            client.xgroup_create(stream_key(run_id, stream), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def stream_health(client: redis.Redis, run_id: str, stream: str) -> StreamHealth:
    """Length, lag, pending and loss of a stream's consumer group, from counters: one round trip
    (XINFO GROUPS, XLEN, the cap's tally), whatever the bytes in flight.

    ``lag``: entries added and not delivered (Redis 7 keeps it per group: entries-added minus the
    group's entries-read; the emergency cap counts what it removed unread as read).
    ``lost``: every entry the cap removed before it was acknowledged (``Producer.put``). Where Redis
    has no lag (6.2, or a counter it could not keep) the undelivered entries are counted, which
    reads their payloads."""
    key = stream_key(run_id, stream)
    group = GROUPS[stream]
    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(key)
    pipe.xlen(key)
    pipe.hgetall(cap_key(run_id, stream))
    groups, length, capped = pipe.execute()
    info = next((g for g in groups if _s(g["name"]) == group), None)
    if info is None:
        raise RuntimeError(f"consumer group {group!r} of {key} does not exist")
    capped = {_s(k): int(v) for k, v in capped.items()}
    lost = capped.get("undelivered", 0) + capped.get("pending", 0)
    if info.get("lag") is not None:  # exact: the cap keeps the group's entries-read exact
        lag = int(info["lag"])
    else:
        lag = len(client.xrange(key, min="(" + _s(info["last-delivered-id"]), max="+"))
    return StreamHealth(length=int(length), lag=lag, pending=int(info["pending"]), lost=lost)


def oldest_unconsumed_age_s(client: redis.Redis, run_id: str, stream: str) -> float:
    """Age of the oldest entry the group has not acknowledged (pending or undelivered), from the
    millisecond time in its id to the server's clock; 0 when the group is caught up."""
    key = stream_key(run_id, stream)
    group = GROUPS[stream]
    candidates = []
    summary = client.xpending(key, group)
    if summary and summary.get("pending"):
        candidates.append(_s(summary["min"]))
    info = next(g for g in client.xinfo_groups(key) if _s(g["name"]) == group)
    first_undelivered = client.xrange(key, min="(" + _s(info["last-delivered-id"]), max="+", count=1)
    if first_undelivered:
        candidates.append(_s(first_undelivered[0][0]))
    if not candidates:
        return 0.0
    oldest_ms = min(int(c.split("-")[0]) for c in candidates)
    seconds, micros = client.time()
    return max(0.0, seconds + micros / 1e6 - oldest_ms / 1000.0)


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Producer:
    """Appends messages to one stream, waiting while its consumers are too far behind."""

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        stream: str,
        max_in_flight: int | None,
        maxlen: int | None,
        count_pending: bool = True,
        pool=None,
    ):
        """``pool``: a ``broker.inflight.PoolBound`` whose count a written group leaves (in the MULTI
        of its XADD); an actor's producer waits on the pool, not on ``max_in_flight``."""
        self.client = client
        self.pool = pool
        self.count_pending = count_pending
        self.run_id = run_id
        self.stream = stream
        self.key = stream_key(run_id, stream)
        self.max_in_flight = max_in_flight
        self.maxlen = maxlen
        self.wait_s = 0.0  # total time spent waiting on backpressure
        self._cap = client.register_script(_CAP)

    def wait_for_room(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        poll_s: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Block while the group's in-flight count is at the bound; False if asked to stop meanwhile.

        Between checks it calls ``sleep(poll_s)``; a caller with other work to serve passes a sleep
        that returns early when that work arrives (``should_stop`` then runs at once)."""
        if self.max_in_flight is None:
            return True
        start = time.monotonic()
        while self._in_flight() >= self.max_in_flight:
            if should_stop():
                self.wait_s += time.monotonic() - start
                return False
            sleep(poll_s)
        self.wait_s += time.monotonic() - start
        return True

    def _in_flight(self) -> int:
        health = stream_health(self.client, self.run_id, self.stream)
        return health.in_flight if self.count_pending else health.lag

    def put(self, message: Message, position: tuple[str, int] | None = None) -> str:
        """Append ``message``; a rollout group's id goes into the run's ledger in the same MULTI, and
        ``position`` (producer name, its next unwritten sampler position) into the sampler hash.
        Past ``maxlen`` entries the oldest are trimmed, and those not yet acknowledged are counted
        lost (``cap_key``; ``stream_health`` reports them)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.key, {FIELD: encode(message)})
        pipe.xlen(self.key)
        if self.stream == "rollouts" and hasattr(message, "group_id"):
            pipe.sadd(ledger_key(self.run_id), message.group_id)
            if position is not None:
                pipe.hset(sampler_key(self.run_id), position[0], position[1])
            if self.pool is not None:  # from the engine to the stream in one step: counted once
                self.pool.release(1, client=pipe)
        entry_id, length = pipe.execute()[:2]
        if self.maxlen is not None and int(length) > self.maxlen:
            self._cap(
                keys=[self.key, cap_key(self.run_id, self.stream)], args=[self.maxlen, GROUPS[self.stream]]
            )
        return _s(entry_id)


@dataclass(frozen=True)
class Entry:
    entry_id: str
    message: Message


# XCLAIM ... JUSTID resets an entry's idle time; claiming only where the caller is the owner keeps
# it from taking back an entry another consumer has claimed meanwhile.
_KEEP_FRESH = """
local held = 0
for i = 3, #ARGV do
    local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
    if entry and entry[2] == ARGV[2] then
        redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
        held = held + 1
    end
end
return held
"""


class Consumer:
    """Reads one stream as a member of its consumer group; bad entries go to the dead-letter stream."""

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        stream: str,
        consumer: str,
        max_deliveries: int = 3,
        expects: type[Message] | None = None,
        max_message_bytes: int | None = None,
    ):
        """``expects``: the one message type this stream carries for the run; an entry of another
        kind, or of another run, is dead-lettered with that reason. ``max_message_bytes``: larger
        entries are dead-lettered unread."""
        self.client = client
        self.expects = expects
        self.max_message_bytes = max_message_bytes
        self.run_id = run_id
        self.stream = stream
        self.key = stream_key(run_id, stream)
        self.group = GROUPS[stream]
        self.consumer = consumer
        self.max_deliveries = max_deliveries
        self.dead_lettered = 0
        self._pending_cursor = "0-0"
        self._keep_fresh = client.register_script(_KEEP_FRESH)

    def read(self, count: int, block_ms: int) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.key: ">"}, count=count, block=block_ms
        )
        return self._decode_entries(reply[0][1] if reply else [])

    def read_own_pending(self, count: int) -> list[Entry]:
        """Entries delivered to this consumer name and never acknowledged (a restarted consumer's:
        Ray restarts reuse the name). Reading them again is a delivery, so ``max_deliveries`` holds
        here too: a poison entry that kills its worker is set aside, not retried until the run fails."""
        while True:  # until an entry to hand out, or none left (a batch may be all set aside)
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.key: self._pending_cursor}, count=count
            )
            raw = reply[0][1] if reply else []
            if not raw:
                return []
            # pending entries stay pending until acknowledged: move past the ones handed out
            self._pending_cursor = _s(raw[-1][0])
            entries = self._decode_entries(self._within_delivery_limit(raw))
            if entries:
                return entries

    def claim_stale(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another consumer read but did not acknowledge within ``min_idle_ms``
        (a holder that works on its entries keeps them fresh: ``keep_fresh``)."""
        reply = self.client.xautoclaim(self.key, self.group, self.consumer, min_idle_ms, "0-0", count=count)
        return self._decode_entries(self._within_delivery_limit(reply[1]))

    def keep_fresh(self, entry_ids: list[str]) -> int:
        """Reset the idle time of those of ``entry_ids`` this consumer still holds (XCLAIM JUSTID to
        itself, only where it is the owner, atomically), so no other consumer claims entries it is
        working on; returns how many it holds. Does not count as a delivery."""
        if not entry_ids:
            return 0
        return int(self._keep_fresh(keys=[self.key], args=[self.group, self.consumer, *entry_ids]))

    def _within_delivery_limit(self, raw_entries: list) -> list:
        """``raw_entries`` less those delivered more than ``max_deliveries`` times without being
        acknowledged (they crashed or hung every consumer that took them): dead-lettered with that reason."""
        keep = []
        for raw_id, fields in raw_entries:
            entry_id = _s(raw_id)
            info = self.client.xpending_range(self.key, self.group, entry_id, entry_id, 1)
            deliveries = int(info[0]["times_delivered"]) if info else 1
            if fields is not None and deliveries > self.max_deliveries:
                reason = f"delivered {deliveries - 1} times without being acknowledged (its consumers died or hung on it)"
                self.dead_letter(entry_id, fields.get(FIELD, b""), reason)
            else:
                keep.append((raw_id, fields))
        return keep

    def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.client.xack(self.key, self.group, *entry_ids)

    def dead_letter(self, entry_id: str, payload: bytes, reason: str) -> None:
        """Set an entry aside with its reason, then acknowledge it so it is not delivered again."""
        letter = DeadLetter(
            stream=self.stream, entry_id=entry_id, reason=reason, consumer=self.consumer, payload=payload
        )
        pipe = self.client.pipeline()
        pipe.xadd(stream_key(self.run_id, "dead"), {FIELD: encode(letter)})
        pipe.xack(self.key, self.group, entry_id)
        pipe.execute()
        self.dead_lettered += 1

    def _decode_entries(self, raw_entries) -> list[Entry]:
        entries = []
        for raw_id, fields in raw_entries:
            entry_id = _s(raw_id)
            if fields is None:  # deleted while pending
                self.ack([entry_id])
                continue
            payload = fields.get(FIELD, b"")
            try:
                message = decode(payload, self.max_message_bytes)
            except DecodeError as exc:
                self.dead_letter(entry_id, payload, f"undecodable entry: {exc}")
                continue
            wrong = self._misplaced(message)
            if wrong:
                self.dead_letter(entry_id, payload, wrong)
                continue
            entries.append(Entry(entry_id, message))
        return entries

    def _misplaced(self, message: Message) -> str | None:
        """Why ``message`` does not belong on this stream of this run, or None."""
        if self.expects is None:
            return None
        if not isinstance(message, self.expects):
            return (
                f"expected {self.expects.model_fields['kind'].default} on {self.stream}, got {message.kind}"
            )
        group = getattr(message, "group", message)
        run_id = getattr(group, "run_id", self.run_id)
        if run_id != self.run_id:
            return f"an entry of run {run_id!r} on the {self.stream} stream of run {self.run_id!r}"
        return None


class ControlChannel:
    """The control stream: broadcast messages every component reads from its own position."""

    def __init__(self, client: redis.Redis, run_id: str, maxlen: int = 100_000):
        self.client = client
        self.run_id = run_id
        self.key = stream_key(run_id, "control")
        self.maxlen = maxlen
        self.last_id = "0-0"
        self.set_aside = 0  # undecodable entries dead-lettered by poll

    def publish(self, message: Message) -> str:
        return _s(self.client.xadd(self.key, {FIELD: encode(message)}, maxlen=self.maxlen, approximate=True))

    def skip_history(self) -> None:
        """Read only what is published from now on (a resumed launcher must not replay old reports)."""
        last = self.client.xrevrange(self.key, count=1)
        if last:
            self.last_id = _s(last[0][0])

    def poll(self, block_ms: int | None = None) -> list[Message]:
        """Messages published since the last poll (blocking up to ``block_ms`` when given). An entry
        that does not decode (a newer schema, a missing field) is dead-lettered with the reason and
        counted (``set_aside``); the valid ones around it are returned. One reader (the launcher)
        polls, so each bad entry is set aside once; the control stream itself is not changed."""
        reply = self.client.xread({self.key: self.last_id}, block=block_ms, count=1000)
        messages = []
        for raw_id, fields in reply[0][1] if reply else []:
            self.last_id = _s(raw_id)
            payload = fields.get(FIELD, b"")
            try:
                messages.append(decode(payload))
            except DecodeError as exc:
                self.set_aside += 1
                letter = DeadLetter(
                    stream="control", entry_id=self.last_id, reason=f"undecodable entry: {exc}",
                    consumer="launcher", payload=payload,
                )  # fmt: skip
                self.client.xadd(stream_key(self.run_id, "dead"), {FIELD: encode(letter)})
        return messages


class ProgressReporter:
    """A component's heartbeat and counters on the control stream, at most every ``interval_s``."""

    def __init__(self, control: ControlChannel, component: str, interval_s: float):
        self.control = control
        self.component = component
        self.interval_s = interval_s
        self._last = 0.0

    def report(self, message: Callable[[str], Message], force: bool = False) -> None:
        """Publish ``message(component)`` (an ``ActorProgress`` or ``PreprocessProgress``), at most
        every ``interval_s`` unless ``force``."""
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._last = now
            self.control.publish(message(self.component))


LOOP_GRACE_S = 10.0  # past what a loop's phase may take, before the loop is taken for hung


class WorkDeadline:
    """Until when a component's loop is believed to be working: every phase of the loop says how
    long it may take (``expect``: a poll tick, an engine call, a batch to score, a training step),
    plus a grace; a loop silent past that is taken for hung and ``working`` turns False, so its
    ``KeepAlive`` stops vouching for it."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._until = time.monotonic() + grace_s

    def expect(self, seconds: float = 0.0) -> None:
        """The loop is alive now, and its next phase may take ``seconds``."""
        self._until = time.monotonic() + seconds + self.grace_s

    def working(self) -> bool:
        return time.monotonic() < self._until


class KeepAlive:
    """A thread that calls ``beats`` every ``interval_s`` while a component's loop works or waits
    (backpressure, a slow batch, a weight load): liveness apart from progress. A frozen or dead
    process stops beating, so the launcher's heartbeat deadline and the claim of its entries by
    another consumer still find it; a beat that fails (Redis away) is retried at the next one."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        beats: list[Callable[[], object]],
        working: Callable[[], bool] = lambda: True,
    ):
        """``working``: False when the loop has made no sign of life for longer than its work can
        take (a hung loop): then the thread stops beating, and the hang is seen as one."""
        self.interval_s = interval_s
        self.beats = beats
        self.working = working
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keepalive-{name}", daemon=True)

    def start(self) -> KeepAlive:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.working():
                continue
            for beat in self.beats:
                try:
                    beat()
                except redis.RedisError:
                    self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)

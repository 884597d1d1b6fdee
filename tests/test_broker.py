"""The broker against a real redis-server: acknowledgement, backpressure, dead letters, loss."""

import threading
import time
import uuid

import msgpack
import pytest

from broker.accounting import generated_ids, read_all, trim_acknowledged, unacked_ids
from broker.schemas import Stop, WeightsPublished, decode
from broker.streams import (
    FIELD,
    Consumer,
    ControlChannel,
    Producer,
    RedisUnavailable,
    connect,
    ensure_groups,
    sampler_key,
    sampler_position,
    stream_health,
    stream_key,
)
from tests.test_schemas import make_group

pytestmark = pytest.mark.integration


@pytest.fixture
def run_id(redis_client):
    rid = "t" + uuid.uuid4().hex[:10]
    ensure_groups(redis_client, rid)
    return rid


def test_keys_carry_the_run_id(redis_client, run_id):
    keys = {k.decode() for k in redis_client.keys(f"*{run_id}*")}
    assert keys == {f"pope:{run_id}:rollouts", f"pope:{run_id}:train"}
    with pytest.raises(ValueError, match="unknown stream"):
        stream_key(run_id, "nope")


def test_produce_consume_ack(redis_client, run_id):
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=100_000)
    for i in range(3):
        producer.put(make_group(f"actor0-{i}"))
    consumer = Consumer(redis_client, run_id, "rollouts", "w0")
    entries = consumer.read(count=2, block_ms=100)
    assert [e.message.group_id for e in entries] == ["actor0-0", "actor0-1"]
    health = stream_health(redis_client, run_id, "rollouts")
    assert (health.length, health.lag, health.pending, health.lost) == (3, 1, 2, 0)
    consumer.ack([entries[0].entry_id])
    assert stream_health(redis_client, run_id, "rollouts").pending == 1
    assert len(unacked_ids(redis_client, run_id, "rollouts")) == 2  # one pending, one never delivered


def test_sampler_position_is_written_with_the_group(redis_client, run_id):
    """The position goes in the same MULTI as the XADD: a group in the stream always counts."""
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=100_000)
    assert sampler_position(redis_client, run_id, "actor0") == 0
    for i in range(3):
        producer.put(make_group(f"actor0-abc-{i:07d}"), ("actor0", i + 1))
    producer.put(make_group("actor1-def-0000000"), ("actor1", 1))
    assert sampler_position(redis_client, run_id, "actor0") == 3
    assert sampler_position(redis_client, run_id, "actor1") == 1
    assert sampler_key(run_id) == f"pope:{run_id}:sampler"
    assert redis_client.xlen(stream_key(run_id, "rollouts")) == 4


def test_backpressure_holds_the_bound(redis_client, run_id):
    bound = 4
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=bound, maxlen=100_000)
    consumer = Consumer(redis_client, run_id, "rollouts", "w0")
    produced = []
    stop = threading.Event()
    max_seen = []

    def produce():
        for i in range(12):
            if not producer.wait_for_room(stop.is_set, poll_s=0.01):
                return
            producer.put(make_group(f"actor0-{i}"))
            produced.append(i)

    thread = threading.Thread(target=produce)
    thread.start()
    time.sleep(0.5)
    assert len(produced) == bound  # blocked at the bound while nobody consumes
    consumed = 0
    while consumed < 12:
        max_seen.append(stream_health(redis_client, run_id, "rollouts").in_flight)
        entries = consumer.read(count=1, block_ms=200)
        time.sleep(0.02)
        consumer.ack([e.entry_id for e in entries])
        consumed += len(entries)
    thread.join(timeout=5)
    assert len(produced) == 12 and max(max_seen) <= bound
    assert producer.wait_s > 0.3


def test_backpressure_wait_can_be_stopped(redis_client, run_id):
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=1, maxlen=100_000)
    producer.put(make_group("actor0-0"))
    assert producer.wait_for_room(lambda: True, poll_s=0.01) is False


def test_undecodable_entry_is_dead_lettered_with_reason(redis_client, run_id):
    key = stream_key(run_id, "rollouts")
    redis_client.xadd(key, {FIELD: b"\x80\x04garbage"})
    Producer(redis_client, run_id, "rollouts", None, 100_000).put(make_group("actor0-1"))
    consumer = Consumer(redis_client, run_id, "rollouts", "w0")
    entries = consumer.read(count=10, block_ms=100)
    assert [e.message.group_id for e in entries] == ["actor0-1"]
    dead = redis_client.xrange(stream_key(run_id, "dead"))
    assert len(dead) == 1 and consumer.dead_lettered == 1
    from broker.schemas import decode

    letter = decode(dead[0][1][FIELD])
    assert letter.reason.startswith("undecodable entry") and letter.payload == b"\x80\x04garbage"
    assert stream_health(redis_client, run_id, "rollouts").pending == 1  # the poison entry was acked


def test_trim_before_read_is_reported_as_loss(redis_client, run_id):
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=5)
    for i in range(20):
        producer.put(make_group(f"actor0-{i}"))  # an emergency cap hit before anyone read
    health = stream_health(redis_client, run_id, "rollouts")
    assert (health.length, health.lag, health.lost) == (5, 5, 15)


def test_stale_entries_are_claimed_by_another_consumer(redis_client, run_id):
    Producer(redis_client, run_id, "rollouts", None, 100_000).put(make_group("actor0-0"))
    dead_worker = Consumer(redis_client, run_id, "rollouts", "w-dead")
    assert len(dead_worker.read(count=1, block_ms=100)) == 1  # read, never acknowledged
    other = Consumer(redis_client, run_id, "rollouts", "w-live")
    time.sleep(0.15)
    claimed = other.claim_stale(min_idle_ms=100, count=10)
    assert [e.message.group_id for e in claimed] == ["actor0-0"]


def test_control_channel_delivers_in_order(redis_client, run_id):
    writer = ControlChannel(redis_client, run_id)
    reader = ControlChannel(redis_client, run_id)
    writer.publish(WeightsPublished(version=1, step=1, broadcast_s=0.1, num_bytes=10))
    writer.publish(Stop(reason="done"))
    got = reader.poll(block_ms=100)
    assert [m.kind for m in got] == ["weights_published", "stop"]
    assert reader.poll() == []


def test_embedded_redis_requires_password_and_opens_no_port(redis_server):
    """A Unix socket in a directory only this user can enter, and no TCP listener: no other
    process can take its address (not even during a restart) and receive the password."""
    import stat

    import psutil
    import redis

    anonymous = redis.Redis(unix_socket_path=str(redis_server.socket_path), socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    assert stat.S_IMODE(redis_server.socket_path.parent.stat().st_mode) == 0o700
    server = psutil.Process(redis_server.process.pid)
    assert [c for c in server.net_connections("tcp") if c.status == "LISTEN"] == []
    assert "port 0" in (redis_server.workdir / "redis.conf").read_text().splitlines()


def test_poison_entry_dead_lettered_after_max_deliveries(redis_client, run_id):
    """An entry that every consumer takes and never acknowledges (it kills them) is set aside."""
    Producer(redis_client, run_id, "rollouts", None, 100_000).put(make_group("actor0-poison"))
    first = Consumer(redis_client, run_id, "rollouts", "w0", max_deliveries=2)
    assert len(first.read(count=1, block_ms=100)) == 1  # delivery 1; the worker "dies"
    claimer = Consumer(redis_client, run_id, "rollouts", "w1", max_deliveries=2)
    time.sleep(0.05)
    assert len(claimer.claim_stale(min_idle_ms=10, count=10)) == 1  # delivery 2; dies again
    time.sleep(0.05)
    assert claimer.claim_stale(min_idle_ms=10, count=10) == []  # delivery 3 > 2: dead-lettered
    from broker.schemas import decode

    (letter,) = [decode(f[FIELD]) for _, f in redis_client.xrange(stream_key(run_id, "dead"))]
    assert "delivered 2 times without being acknowledged" in letter.reason
    assert decode(letter.payload).group_id == "actor0-poison"  # the entry itself is kept, inspectable
    assert stream_health(redis_client, run_id, "rollouts").pending == 0


def test_acknowledged_state_survives_a_redis_restart(tmp_path):
    """Persistence on: stream entries, the group's position and its pending list survive a restart
    of redis-server; a client reconnects by itself (bounded retries) once the server is back, and
    fails loudly when it does not come back."""
    import redis as redis_lib

    from broker.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", persistence=True).start()
    client = connect(server.url, socket_timeout_s=5, reconnect_timeout_s=2)
    rid = "persist"
    ensure_groups(client, rid)
    producer = Producer(client, rid, "rollouts", None, 100_000)
    for i in range(5):
        producer.put(make_group(f"actor0-{i}"))
    consumer = Consumer(client, rid, "rollouts", "w0")
    entries = consumer.read(count=3, block_ms=100)
    consumer.ack([entries[0].entry_id])  # 1 acknowledged, 2 pending, 2 never delivered
    client.execute_command("BGREWRITEAOF")
    time.sleep(1.5)  # appendfsync everysec
    server.stop()
    with pytest.raises(redis_lib.ConnectionError):  # bounded retries, then a loud failure
        client.ping()
    restarted = EmbeddedRedis(tmp_path / "redis", persistence=True)
    restarted.socket_path, restarted.password = server.socket_path, server.password  # same address, secret
    restarted.start()
    try:
        health = stream_health(client, rid, "rollouts")  # the old client reconnects by itself
        assert (health.length, health.pending, health.lag) == (5, 2, 2)
        again = Consumer(client, rid, "rollouts", "w0").read_own_pending(10)
        assert [e.message.group_id for e in again] == ["actor0-1", "actor0-2"]
    finally:
        restarted.stop()


def test_acknowledged_entries_are_trimmed_and_nothing_else(redis_client, run_id):
    """XTRIM MINID below the oldest pending entry and the group's last delivery: an entry that is
    pending or was never delivered stays; the ledger keeps every group id; no entry counts as lost."""
    producer = Producer(redis_client, run_id, "rollouts", None, 100_000)
    ids = [producer.put(make_group(f"actor0-{i}")) for i in range(6)]
    consumer = Consumer(redis_client, run_id, "rollouts", "w0")
    assert len(consumer.read(count=4, block_ms=100)) == 4  # 0..3 delivered, 4 and 5 not
    consumer.ack([ids[0], ids[2]])
    assert trim_acknowledged(redis_client, run_id, "rollouts") == 1  # 0; 1 is pending, so 2 stays
    consumer.ack([ids[1]])
    assert trim_acknowledged(redis_client, run_id, "rollouts") == 2  # 1 and 2; 3 is pending
    key = stream_key(run_id, "rollouts")
    assert [e[0].decode() for e in redis_client.xrange(key)] == ids[3:]
    consumer.ack([ids[3]])
    assert trim_acknowledged(redis_client, run_id, "rollouts") == 1
    assert trim_acknowledged(redis_client, run_id, "rollouts") == 0  # 4 and 5 were never delivered
    health = stream_health(redis_client, run_id, "rollouts")
    assert (health.length, health.lag, health.pending, health.lost) == (2, 2, 0, 0)
    assert unacked_ids(redis_client, run_id, "rollouts") == set(ids[4:])
    assert generated_ids(redis_client, run_id) == {f"actor0-{i}" for i in range(6)}
    assert [e.message.group_id for e in consumer.read(count=10, block_ms=100)] == ["actor0-4", "actor0-5"]


@pytest.mark.unit
def test_unreachable_redis_fails_after_the_budget_naming_it():
    """An external Redis that stays down: bounded retries, then an error naming Redis and its
    address (not its password)."""
    from broker.embedded import free_port

    port = free_port()  # nothing listens there
    client = connect(f"redis://:s3cret@127.0.0.1:{port}/0", reconnect_timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(
        RedisUnavailable, match=rf"Redis at redis://127.0.0.1:{port}/0 did not answer for 1.5s"
    ) as exc:
        Consumer(client, "r", "rollouts", "w0").read(count=1, block_ms=10)
    elapsed = time.monotonic() - start
    assert 1.5 <= elapsed < 6, elapsed  # the budget, not a count of tries multiplied by nesting
    assert "s3cret" not in str(exc.value) and "broker.reconnect_timeout_s" in str(exc.value)


def test_supervised_embedded_redis_comes_back_with_its_state(tmp_path):
    """SIGKILL the embedded server: the supervisor restarts it on the same socket from its AOF, a
    client reconnects by itself, and acknowledged and pending state is as it was; past
    ``max_restarts`` it gives up and says so, and the client fails naming Redis."""
    import signal

    from broker.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", persistence=True).start()
    reports: list[str] = []
    server.supervise(max_restarts=1, report=reports.append, poll_s=0.05)
    try:
        client = connect(server.url, socket_timeout_s=5, reconnect_timeout_s=20)
        rid = "supervised"
        ensure_groups(client, rid)
        producer = Producer(client, rid, "rollouts", None, 100_000)
        ids = [producer.put(make_group(f"actor0-{i}")) for i in range(4)]
        consumer = Consumer(client, rid, "rollouts", "w0")
        assert len(consumer.read(count=2, block_ms=100)) == 2
        consumer.ack([ids[0]])  # acknowledged: 0; pending: 1; never delivered: 2, 3
        first_pid = server.process.pid
        server.process.send_signal(signal.SIGKILL)  # no time to flush: appendfsync always
        health = stream_health(client, rid, "rollouts")  # blocks until the supervisor restarted it
        assert server.process.pid != first_pid and server.restarts == 1
        assert (health.length, health.pending, health.lag) == (4, 1, 2)
        assert generated_ids(client, rid) == {f"actor0-{i}" for i in range(4)}
        assert f"restarted on {server.socket_path}" in reports[0]
        server.process.send_signal(signal.SIGKILL)  # a second death: no restarts left
        deadline = time.monotonic() + 10
        while server.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "broker.max_redis_restarts" in server.failure
        with pytest.raises(RedisUnavailable, match=f"Redis at unix://{server.socket_path}"):
            connect(server.url, reconnect_timeout_s=1.0).ping()
    finally:
        server.stop()


def test_an_embedded_redis_dies_with_the_process_that_started_it(tmp_path):
    """A launcher SIGKILLed leaves no redis-server behind holding the run's AOF: the server gets
    SIGTERM when its owner dies (PR_SET_PDEATHSIG), and exits within seconds."""
    import signal
    import subprocess
    import sys

    import psutil

    workdir = tmp_path / "redis"
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from broker.embedded import EmbeddedRedis; "
         f"s = EmbeddedRedis({str(workdir)!r}, persistence=True).start(); print(s.process.pid, flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        server = psutil.Process(int(owner.stdout.readline()))
        assert server.name() == "redis-server" and (workdir / "redis.pid").read_text().strip() == str(
            server.pid
        )
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        gone, alive = psutil.wait_procs([server], timeout=10)
        assert gone and not alive, "the redis-server outlived the process that started it"
    finally:
        owner.kill()


def test_a_dead_owners_server_is_stopped_before_a_new_one_starts_on_its_directory(tmp_path):
    """When a server did outlive its owner (no PR_SET_PDEATHSIG, e.g. not Linux), the next start in
    that directory stops it first (its pid file, a redis-server working there): two servers never
    share an AOF, and what the old one acknowledged is in the new one. A pid file naming another
    program (a reused pid) is left alone."""
    import os

    import psutil

    from broker.embedded import EmbeddedRedis, stop_stale_server

    old = EmbeddedRedis(tmp_path / "redis", persistence=True).start()
    try:
        client = connect(old.url, socket_timeout_s=5, reconnect_timeout_s=2)
        ensure_groups(client, "stale")
        Producer(client, "stale", "rollouts", None, 100_000).put(make_group("actor0-0"))
        client.close()
        new = EmbeddedRedis(tmp_path / "redis", persistence=True).start()
        try:
            assert new.stale_stopped == old.process.pid
            assert old.process.wait(timeout=5) == 0  # SIGTERM: it flushed and exited cleanly
            again = connect(new.url, socket_timeout_s=5, reconnect_timeout_s=2)
            assert generated_ids(again, "stale") == {"actor0-0"}
            again.close()
        finally:
            new.stop()
    finally:
        old.stop()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "redis.pid").write_text(str(os.getpid()))  # this pytest: not a redis-server
    assert stop_stale_server(tmp_path / "other") is None and psutil.pid_exists(os.getpid())


def test_every_group_ends_in_exactly_one_outcome(redis_client, run_id):
    """The end-of-run books: eight groups written, each placed by hand below; a trained id that
    also went to the dead letters (scored twice) is trained; a copy trained twice is counted apart;
    a group the actors wrote that Redis no longer has is lost."""
    from broker.accounting import account_groups
    from broker.schemas import ScoredGroup

    producer = Producer(redis_client, run_id, "rollouts", None, 100_000)
    ids = [producer.put(make_group(f"actor0-{i}")) for i in range(7)]
    consumer = Consumer(redis_client, run_id, "rollouts", "w0")
    consumer.read(count=6, block_ms=100)  # 0..5 delivered, 6 never: in flight
    consumer.ack(ids[:3])  # 0, 1, 2 scored
    consumer.dead_letter(ids[3], redis_client.xrange(stream_key(run_id, "rollouts"), ids[3], ids[3])[0][1][FIELD],
                         "poison")  # fmt: skip
    consumer.dead_letter(ids[0], b"not a message", "undecodable entry: test")  # names no group
    train = Producer(redis_client, run_id, "train", None, 100_000)
    scored = ScoredGroup(group=make_group("actor0-4"), rewards=[1.0, 0.0], advantages=[0.5, -0.5],
                         verdicts=["correct", "wrong"], worker_id="w0")  # fmt: skip
    train.put(scored)  # 4: scored, not read by the learner: in flight; 5 stays pending on rollouts
    book = account_groups(
        redis_client,
        run_id,
        trained=["actor0-0", "actor0-1", "actor0-1"],
        skipped={"zero_variance": ["actor0-2"], "duplicate": ["actor0-1"]},
        written_by_actors={"actor0-7"},  # acknowledged by Redis, then gone
    )
    assert book.outcome == {
        "actor0-0": "trained",
        "actor0-1": "trained",
        "actor0-2": "skipped",
        "actor0-3": "dead_lettered",
        "actor0-4": "in_flight",
        "actor0-5": "in_flight",
        "actor0-6": "in_flight",
        "actor0-7": "lost",
    }
    assert book.counts() == {"trained": 2, "skipped": 1, "in_flight": 3, "dead_lettered": 1, "lost": 1}
    assert sum(book.counts().values()) == len(book.generated) == 8
    assert book.by_reason("dead_lettered") == {"poison": ["actor0-3"]}
    assert book.reasons["actor0-2"] == "zero_variance"
    assert book.trained_copies == 1
    assert book.letters == {"poison": 1, "undecodable entry: test": 1} and book.letters_without_group == 1


def test_a_restarted_consumer_applies_the_delivery_limit_to_its_own_pending(redis_client, run_id):
    """A poison entry that kills its worker every time: the restarted worker (same consumer name)
    reads it from its own pending entries; past max_deliveries it is dead-lettered, not retried."""
    producer = Producer(redis_client, run_id, "rollouts", None, 100_000)
    poison = producer.put(make_group("actor0-0"))
    healthy = producer.put(make_group("actor0-1"))
    assert [e.entry_id for e in Consumer(redis_client, run_id, "rollouts", "w0").read(1, 100)] == [poison]
    restarted = Consumer(redis_client, run_id, "rollouts", "w0", max_deliveries=2)
    assert [e.entry_id for e in restarted.read_own_pending(10)] == [poison]  # delivery 2: kept
    again = Consumer(redis_client, run_id, "rollouts", "w0", max_deliveries=2)
    assert again.read_own_pending(10) == []  # delivery 3 > 2: set aside
    assert again.dead_lettered == 1
    assert [e.entry_id for e in again.read(10, 100)] == [healthy]
    (letter,) = [m for _, m in read_all(redis_client, run_id, "dead")]
    assert letter.entry_id == poison and "delivered 2 times" in letter.reason


def test_keep_fresh_holds_only_what_the_consumer_owns(redis_client, run_id):
    import time

    producer = Producer(redis_client, run_id, "rollouts", None, 100_000)
    ids = [producer.put(make_group(f"actor0-{i}")) for i in range(2)]
    holder = Consumer(redis_client, run_id, "rollouts", "w0")
    holder.read(2, 100)
    time.sleep(0.3)
    assert holder.keep_fresh(ids) == 2
    thief = Consumer(redis_client, run_id, "rollouts", "w1")
    assert thief.claim_stale(250, 10) == []  # just refreshed
    time.sleep(0.3)
    assert [e.entry_id for e in thief.claim_stale(250, 10)] == ids
    assert holder.keep_fresh(ids) == 0  # w1 owns them now: not taken back
    owners = {
        e["consumer"]
        for e in redis_client.xpending_range(stream_key(run_id, "rollouts"), "preprocess", "-", "+", 10)
    }
    assert owners == {b"w1"}
    deliveries = [
        e["times_delivered"]
        for e in redis_client.xpending_range(stream_key(run_id, "rollouts"), "preprocess", "-", "+", 10)
    ]
    assert deliveries == [2, 2]  # keep_fresh is not a delivery


def test_a_consumer_sets_aside_another_kind_another_run_and_an_oversized_entry(redis_client, run_id):
    """On the train stream the learner reads scored groups of its run only: a rollout group, a
    scored group of another run and an entry over the size cap are dead-lettered with the reason
    (payload kept), and the valid entry behind them is read."""
    from broker.schemas import ScoredGroup

    def scored(run: str) -> ScoredGroup:
        group = make_group("actor0-1").model_copy(update={"run_id": run})
        return ScoredGroup(group=group, rewards=[1.0, 0.0], advantages=[0.5, -0.5],
                           verdicts=["correct", "wrong"], worker_id="w0")  # fmt: skip

    producer = Producer(redis_client, run_id, "train", None, 100_000)
    wrong_kind = producer.put(make_group("actor0-0").model_copy(update={"run_id": run_id}))
    other_run = producer.put(scored("someone-else"))
    big = scored(run_id).model_copy(update={"worker_id": "w" * 5000})
    oversized = producer.put(big)
    good = producer.put(scored(run_id))
    learner = Consumer(redis_client, run_id, "train", "learner0", expects=ScoredGroup, max_message_bytes=4096)
    assert [e.entry_id for e in learner.read(10, 100)] == [good]
    letters = {m.entry_id: m for _, m in read_all(redis_client, run_id, "dead")}
    assert letters[wrong_kind].reason == "expected scored_group on train, got rollout_group"
    assert (
        letters[other_run].reason == f"an entry of run 'someone-else' on the train stream of run '{run_id}'"
    )
    assert "over the 4096-byte cap" in letters[oversized].reason
    assert decode(letters[wrong_kind].payload).group_id == "actor0-0"  # nothing of it is lost
    assert learner.dead_lettered == 3 and stream_health(redis_client, run_id, "train").pending == 1


def test_an_undecodable_control_entry_is_set_aside_and_the_messages_around_it_kept(redis_client, run_id):
    from broker.schemas import Stop

    control = ControlChannel(redis_client, run_id)
    control.publish(Stop(reason="first"))
    newer = msgpack.packb({"kind": "stop", "schema_version": 99, "reason": "from a newer build"})
    bad_id = redis_client.xadd(stream_key(run_id, "control"), {FIELD: newer}).decode()
    redis_client.xadd(
        stream_key(run_id, "control"), {FIELD: msgpack.packb({"kind": "stop", "schema_version": 2})}
    )
    control.publish(Stop(reason="last"))
    assert [m.reason for m in control.poll()] == ["first", "last"]
    assert control.set_aside == 2 and control.poll() == []
    letters = [m for _, m in read_all(redis_client, run_id, "dead")]
    assert [(m.stream, m.entry_id) for m in letters][0] == ("control", bad_id)
    assert "schema_version 99" in letters[0].reason and "reason" in letters[1].reason
    assert letters[0].payload == newer


def test_stream_health_reads_counters_not_entries(redis_client, run_id):
    """Health comes from counters alone (no XRANGE over the payloads in flight), and the emergency
    cap's losses are counted whether never delivered or pending: 20 written under a cap of 12; 5
    read and acknowledged, 3 read and left pending, then the cap removes 8 (5 acknowledged, 3
    pending: lost), and 4 more writes remove 4 never delivered (lost)."""
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=12)
    for i in range(12):
        producer.put(make_group(f"actor0-{i}"))
    consumer = Consumer(redis_client, run_id, "rollouts", "w0")
    consumer.ack([e.entry_id for e in consumer.read(5, 100)])
    assert len(consumer.read(3, 100)) == 3
    for i in range(12, 24):
        producer.put(make_group(f"actor0-{i}"))

    def xrange_calls() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_xrange", {}).get("calls", 0))

    before = xrange_calls()
    health = stream_health(redis_client, run_id, "rollouts")
    assert xrange_calls() == before
    # 24 written, 12 removed: 5 acknowledged, 3 pending, 4 never read; 12 left, none delivered
    assert (health.length, health.lag, health.pending, health.lost) == (12, 12, 3, 7)
    assert redis_client.hgetall(f"pope:{run_id}:rollouts:capped") == {b"undelivered": b"4", b"pending": b"3"}
    read = consumer.read(20, 100)
    assert [e.message.group_id for e in read] == [f"actor0-{i}" for i in range(12, 24)]
    health = stream_health(redis_client, run_id, "rollouts")
    assert (health.lag, health.lost) == (0, 7)


def _server_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def test_the_pool_bound_counts_both_streams_and_every_actors_engine(redis_client, run_id):
    """Ahead of the learner: rollouts lag + pending, train lag (not the learner's batch), every
    actor's reserved groups. The old count (rollouts lag + pending + the caller's own groups) saw 3
    here and let the caller take 5 more; the pool sees 6 and grants 2."""
    from broker.inflight import PoolBound, generating_key

    a = PoolBound(redis_client, run_id, "actor0", max_in_flight=8, stale_s=30.0)
    b = PoolBound(redis_client, run_id, "actor1", max_in_flight=8, stale_s=30.0)
    rollouts = Producer(redis_client, run_id, "rollouts", None, 100_000)
    for i in range(3):
        rollouts.put(make_group(f"actor9-r{i}"))
    Consumer(redis_client, run_id, "rollouts", "w0").read(count=1, block_ms=100)  # being scored
    train = Producer(redis_client, run_id, "train", None, 100_000)
    for i in range(3):
        train.put(make_group(f"actor9-t{i}"))
    Consumer(redis_client, run_id, "train", "learner").read(count=2, block_ms=100)  # the learner's batch
    assert b.reserve(2) == 2
    seen = a.count()
    assert (seen.rollouts_lag, seen.rollouts_pending, seen.train_lag, seen.others, seen.own) == (
        2,
        1,
        1,
        2,
        0,
    )
    assert seen.total == 6 and seen.granted == 0
    assert a.reserve(5) == 2 and a.reserve(1) == 0  # 8 - 6: the rest of the room, no more
    assert PoolBound(redis_client, run_id, "actor2", 8, 30.0).acquire(1, lambda: True, poll_s=0.01) == 0
    # a written group leaves its actor's count in the MULTI of its XADD: the total does not move
    Producer(redis_client, run_id, "rollouts", None, 100_000, pool=b).put(make_group("actor1-x-0000000"))
    seen = a.count()
    assert (seen.rollouts_lag, seen.others, seen.own, seen.total) == (3, 1, 2, 8)
    assert redis_client.hget(generating_key(run_id), "actor1").split()[0] == b"1"
    b.release(5)  # dropped (more than it holds): its count stops at 0
    assert a.count().others == 0 and a.reserve(3) == 1


def test_a_stale_count_is_ignored_and_restart_or_stop_clear_their_own(redis_client, run_id):
    from broker.inflight import PoolBound, generating_key

    key = generating_key(run_id)
    a = PoolBound(redis_client, run_id, "actor0", max_in_flight=4, stale_s=30.0)
    now = _server_ms(redis_client)
    redis_client.hset(key, "actor1", f"3 {now - 29_000}")  # refreshed 29 s ago: alive, counted
    redis_client.hset(key, "actor2", f"4 {now - 31_000}")  # 31 s: an actor gone for good, ignored
    seen = a.count()
    assert (seen.others, seen.total) == (3, 3)
    assert a.reserve(4) == 1
    redis_client.hset(key, "actor0", f"2 {now - 60_000}")  # its own count is its own, whatever its age
    assert a.count().own == 2
    a.refresh()
    count, stamp = redis_client.hget(key, "actor0").split()
    assert int(count) == 2 and int(stamp) >= now
    a.reset()  # restarted by Ray: nothing of its last life is in its engine
    assert redis_client.hget(key, "actor0").split()[0] == b"0"
    a.leave()  # resized away
    assert redis_client.hget(key, "actor0") is None
    assert key.startswith(f"pope:{run_id}:")


def test_pool_reservations_never_share_room(redis_client, run_id):
    """Eight actors reserve one group at a time, at once: exactly the bound is granted."""
    from broker.inflight import PoolBound

    bound = 12
    granted = []

    def take(name):
        pool = PoolBound(redis_client, run_id, name, max_in_flight=bound, stale_s=30.0)
        for _ in range(bound):
            granted.append(pool.reserve(1))

    threads = [threading.Thread(target=take, args=(f"actor{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(granted) == bound and len(granted) == 8 * bound

"""The broker against a real redis-server: acknowledgement, backpressure, dead letters, loss."""

import threading
import time
import uuid

import pytest

from broker.schemas import Stop, WeightsPublished
from broker.streams import (
    FIELD,
    Consumer,
    ControlChannel,
    Producer,
    ensure_groups,
    stream_health,
    stream_key,
    unacked_ids,
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
    producer = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=1000)
    key = stream_key(run_id, "rollouts")
    for i in range(20):
        producer.put(make_group(f"actor0-{i}"))
    redis_client.xtrim(key, maxlen=5, approximate=False)  # an emergency cap hit before anyone read
    health = stream_health(redis_client, run_id, "rollouts")
    assert health.length == 5 and health.lost == 15


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


def test_embedded_redis_requires_password_and_binds_loopback(redis_server):
    import redis

    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    conf = (redis_server.workdir / "redis.conf").read_text()
    assert "bind 127.0.0.1" in conf


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
    from broker.streams import connect, ensure_groups

    server = EmbeddedRedis(tmp_path / "redis", persistence=True).start()
    client = connect(server.url, socket_timeout_s=5)
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
    restarted.port, restarted.password = server.port, server.password  # same address, same secret
    restarted.start()
    try:
        health = stream_health(client, rid, "rollouts")  # the old client reconnects by itself
        assert (health.length, health.pending, health.lag) == (5, 2, 2)
        again = Consumer(client, rid, "rollouts", "w0").read_own_pending(10)
        assert [e.message.group_id for e in again] == ["actor0-1", "actor0-2"]
    finally:
        restarted.stop()

"""Broker throughput: rollout groups through produce -> consume (XREADGROUP) -> acknowledge.

A real embedded redis-server; a producer process (an actor's role) XADDs ``RolloutGroup``
messages of 8 rollouts x T completion tokens (token ids int32 and logprobs float32 as packed
arrays, plus the decoded text), while this process (a preprocess worker's role) reads them in
the "preprocess" consumer group, decodes them and acknowledges each read.

Two phases per size T:
- concurrent: groups/s and MB/s (encoded bytes) from the producer's start to the last ack;
- sequential, one thread, one group at a time: the mean cost in ms of put, read and ack, whose
  sum is ``per_group_ms``.

And the cost of one backpressure poll (``stream_health``, every 50 ms per waiting producer) with
paper-shaped groups in flight (8 rollouts x 16k tokens, logprobs and text; 256 groups, 32 with
--quick): the counters ``stream_health`` reads now, against counting the undelivered entries with
XRANGE as it did before (which moves every payload in flight to the client).
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from broker.schemas import PackedArray, Rollout, RolloutGroup, encode

NUM_ROLLOUTS = 8
PROMPT_TOKENS = 128
VOCAB = 151_936  # Qwen's vocabulary: token ids span the int32 range a real model writes
READ_COUNT = 4  # groups per XREADGROUP, the preprocess default (groups_per_read)


def make_group(run_id: str, index: int, completion_tokens: int, seed: int = 0) -> RolloutGroup:
    rng = np.random.default_rng(seed * 1_000_003 + index)
    rollouts = [
        Rollout(
            completion_ids=PackedArray.of(rng.integers(0, VOCAB, completion_tokens), "int32"),
            behaviour_logprobs=PackedArray.of(-rng.exponential(1.0, completion_tokens), "float32"),
            text="x = 1 + 2. " * (completion_tokens * 4 // 11),  # ~4 characters per token
            finish_reason="length",
        )
        for _ in range(NUM_ROLLOUTS)
    ]
    return RolloutGroup(
        run_id=run_id, group_id=f"bench-{index}", problem_id=f"p{index}", variant="unguided",
        answer="42", prompt_ids=PackedArray.of(rng.integers(0, VOCAB, PROMPT_TOKENS), "int32"),
        rollouts=rollouts, temperature=1.0, max_new_tokens=64, policy_version_start=0, policy_version_end=0, actor_id="bench",
        sampled_at=time.time(), generate_s=0.0,
    )  # fmt: skip


def _producer(url: str, run_id: str, completion_tokens: int, num_groups: int, ready, start, conn) -> None:
    from broker.streams import Producer, connect

    messages = [make_group(run_id, i, completion_tokens) for i in range(num_groups)]
    producer = Producer(connect(url), run_id, "rollouts", max_in_flight=None, maxlen=100_000)
    ready.set()
    start.wait()
    put_s = 0.0
    for message in messages:
        t0 = time.perf_counter()
        producer.put(message)
        put_s += time.perf_counter() - t0
    conn.send(put_s)


def _concurrent(url: str, completion_tokens: int, num_groups: int) -> dict:
    from broker.streams import Consumer, connect, ensure_groups

    run_id = f"bench-c{completion_tokens}"
    client = connect(url)
    ensure_groups(client, run_id)
    consumer = Consumer(client, run_id, "rollouts", "bench-consumer")
    ctx = mp.get_context("spawn")
    ready, start = ctx.Event(), ctx.Event()
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_producer, args=(url, run_id, completion_tokens, num_groups, ready, start, child)
    )
    proc.start()
    if not ready.wait(timeout=300):
        raise TimeoutError("the producer process did not build its messages within 300 s")
    t0 = time.perf_counter()
    start.set()
    consumed = 0
    while consumed < num_groups:
        entries = consumer.read(count=READ_COUNT, block_ms=5000)
        if not entries:
            raise TimeoutError(f"no entries for 5 s after {consumed}/{num_groups} groups")
        consumer.ack([e.entry_id for e in entries])
        consumed += len(entries)
    elapsed_s = time.perf_counter() - t0
    put_s = parent.recv()
    proc.join(timeout=30)
    client.delete(f"pope:{run_id}:rollouts")
    client.close()
    return {"elapsed_s": elapsed_s, "producer_put_s": put_s}


def _sequential(url: str, completion_tokens: int, num_groups: int) -> dict:
    from broker.streams import Consumer, Producer, connect, ensure_groups

    run_id = f"bench-s{completion_tokens}"
    client = connect(url)
    ensure_groups(client, run_id)
    producer = Producer(client, run_id, "rollouts", max_in_flight=None, maxlen=100_000)
    consumer = Consumer(client, run_id, "rollouts", "bench-consumer")
    messages = [make_group(run_id, i, completion_tokens) for i in range(num_groups)]
    put_s = read_s = ack_s = 0.0
    for message in messages:
        t0 = time.perf_counter()
        producer.put(message)
        t1 = time.perf_counter()
        (entry,) = consumer.read(count=1, block_ms=5000)
        t2 = time.perf_counter()
        consumer.ack([entry.entry_id])
        t3 = time.perf_counter()
        put_s, read_s, ack_s = put_s + t1 - t0, read_s + t2 - t1, ack_s + t3 - t2
    client.delete(f"pope:{run_id}:rollouts")
    client.close()
    n = num_groups
    return {"put_ms": 1e3 * put_s / n, "read_ms": 1e3 * read_s / n, "ack_ms": 1e3 * ack_s / n}


def _health_by_reading(client, run_id: str) -> int:
    """The previous poll: the undelivered entries counted by reading them (payloads included)."""
    from broker.streams import _s, stream_key

    key = stream_key(run_id, "rollouts")
    info = next(g for g in client.xinfo_groups(key) if _s(g["name"]) == "preprocess")
    return len(client.xrange(key, min="(" + _s(info["last-delivered-id"]), max="+"))


def poll_cost(url: str, in_flight: int, completion_tokens: int = 16_384) -> dict:
    """Milliseconds per backpressure poll with ``in_flight`` groups waiting, before and after."""
    from broker.streams import Producer, connect, ensure_groups, stream_health

    run_id = f"bench-poll{in_flight}"
    client = connect(url)
    ensure_groups(client, run_id)
    producer = Producer(client, run_id, "rollouts", max_in_flight=None, maxlen=None)
    group_bytes = 0
    for i in range(in_flight):
        group = make_group(run_id, i, completion_tokens)
        group_bytes = len(encode(group))
        producer.put(group)
    assert stream_health(client, run_id, "rollouts").lag == _health_by_reading(client, run_id) == in_flight

    def per_call_ms(fn, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return 1e3 * (time.perf_counter() - start) / calls

    counters_ms = per_call_ms(lambda: stream_health(client, run_id, "rollouts"), 200)
    reading_ms = per_call_ms(lambda: _health_by_reading(client, run_id), 3)
    client.delete(f"pope:{run_id}:rollouts")
    client.close()
    return {
        "in_flight_groups": in_flight,
        "group_bytes": group_bytes,
        "bytes_in_flight": in_flight * group_bytes,
        "poll_ms": counters_ms,
        "poll_ms_reading_entries": reading_ms,
    }


def run(quick: bool = False) -> dict:
    from broker.embedded import EmbeddedRedis

    sizes = (64, 512, 2048)
    num_groups = 200 if quick else 1000
    results: dict = {"num_rollouts": NUM_ROLLOUTS, "prompt_tokens": PROMPT_TOKENS, "read_count": READ_COUNT}
    with tempfile.TemporaryDirectory(prefix="pope-bench-redis-") as tmp, EmbeddedRedis(Path(tmp)) as server:
        for tokens in sizes:
            group_bytes = len(encode(make_group("bench", 0, tokens)))
            concurrent = _concurrent(server.url, tokens, num_groups)
            sequential = _sequential(server.url, tokens, max(20, num_groups // 4))
            groups_per_s = num_groups / concurrent["elapsed_s"]
            results[f"tokens_{tokens}"] = {
                "num_groups": num_groups,
                "group_bytes": group_bytes,
                "groups_per_s": groups_per_s,
                "mb_per_s": groups_per_s * group_bytes / 1e6,
                "producer_put_ms": 1e3 * concurrent["producer_put_s"] / num_groups,
                **sequential,
                "per_group_ms": sequential["put_ms"] + sequential["read_ms"] + sequential["ack_ms"],
            }
        results["poll"] = [poll_cost(server.url, n) for n in ((8, 32) if quick else (32, 256))]
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))

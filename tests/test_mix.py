"""The exact per-step mix: the learner's StepMix, and the sampler positions actors claim in Redis."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from learner.mix import StepMix


@pytest.fixture
def run_id(redis_client):
    import uuid

    from broker.streams import ensure_groups

    rid = "t" + uuid.uuid4().hex[:10]
    ensure_groups(redis_client, rid)
    return rid


@pytest.mark.unit
def test_every_step_is_exact_whatever_the_arrival_order():
    """Arrivals of a balanced production in random order (actors of different speeds): each step holds
    exactly 4 guided and 4 unguided, and nothing is dropped or taken twice."""
    rng = random.Random(0)
    arrivals = [("unguided", i) for i in range(400)] + [("guided", i) for i in range(400)]
    rng.shuffle(arrivals)
    mix = StepMix({"unguided": 4, "guided": 4})
    taken = []
    for variant, i in arrivals:
        mix.offer(variant, None, (variant, i))
        while mix.ready():
            step = mix.take()
            assert Counter(v for v, _ in step) == {"unguided": 4, "guided": 4}
            taken += step
    assert len(taken) + mix.held() == 800 and len(set(taken)) == len(taken)
    assert mix.held() == 0  # a balanced production is used up entirely


@pytest.mark.unit
def test_pairs_train_both_versions_of_a_problem_in_one_step():
    mix = StepMix({"unguided": 2, "guided": 2}, paired=True)
    mix.offer("guided", 7, "g7")
    mix.offer("unguided", 3, "u3")
    mix.offer("guided", 5, "g5")
    mix.offer("unguided", 5, "u5")
    assert not mix.ready() and mix.missing() == {"unguided": 1, "guided": 1}
    mix.offer("unguided", 7, "u7")
    assert mix.ready()
    step = mix.take()
    assert sorted(step) == ["g5", "g7", "u5", "u7"] and mix.held() == 1  # u3 waits for its partner
    with pytest.raises(ValueError, match="pair"):
        mix.offer("guided", None, "x")


@pytest.mark.unit
def test_a_variant_outside_the_mix_is_refused():
    mix = StepMix({"unguided": 2})
    assert not mix.accepts("easy")
    with pytest.raises(ValueError, match="easy"):
        mix.offer("easy", None, "x")


@pytest.mark.integration
def test_claimed_positions_are_disjoint_and_a_restart_asks_what_was_not_written(redis_client, run_id):
    from broker.streams import PositionClaims, sampler_position

    claims = PositionClaims(redis_client, run_id)
    a, b = claims.claim("actor0", 4), claims.claim("actor1", 4)
    assert (list(a), list(b)) == ([0, 1, 2, 3], [4, 5, 6, 7])
    assert list(claims.unfinished("actor0")) == [0, 1, 2, 3]  # nothing written yet
    redis_client.hset(f"pope:{run_id}:sampler", "actor0", 2)  # what Producer.put writes: 0 and 1 done
    assert sampler_position(redis_client, run_id, "actor0") == 2
    assert list(claims.unfinished("actor0")) == [2, 3]
    redis_client.hset(f"pope:{run_id}:sampler", "actor0", 4)
    assert list(claims.unfinished("actor0")) == []
    assert list(claims.claim("actor0", 2)) == [8, 9] and claims.claimed() == 10
    assert list(claims.unfinished("actor9")) == []  # a new producer has nothing to redo


@pytest.mark.integration
def test_a_producer_holding_several_claims_redoes_every_unwritten_position(redis_client, run_id):
    """A continuous actor claims again before its last claim is written: every claim is kept until
    written, a restart asks what is unwritten across all of them, in order; claims wholly written
    are dropped at the next claim."""
    from broker.streams import PositionClaims

    claims = PositionClaims(redis_client, run_id)
    assert list(claims.claim("actor0", 2)) == [0, 1]
    assert list(claims.claim("actor1", 2)) == [2, 3]
    assert list(claims.claim("actor0", 2)) == [4, 5]  # 0 and 1 still unwritten
    assert claims.unfinished("actor0") == [0, 1, 4, 5]
    redis_client.hset(f"pope:{run_id}:sampler", "actor0", 1)  # position 0 written (in order)
    assert claims.unfinished("actor0") == [1, 4, 5]
    redis_client.hset(f"pope:{run_id}:sampler", "actor0", 2)  # the first claim done
    assert list(claims.claim("actor0", 1)) == [6]
    assert redis_client.hget(f"pope:{run_id}:sampler", "actor0:claim") == b"4 6 6 7"  # [0, 2) dropped
    assert claims.unfinished("actor0") == [4, 5, 6]
    redis_client.hset(f"pope:{run_id}:sampler", "actor0", 7)
    assert claims.unfinished("actor0") == [] and claims.unfinished("actor1") == [2, 3]


@pytest.mark.integration
def test_groups_the_learner_holds_do_not_hold_back_the_producers(redis_client, run_id):
    """Train entries the learner read but holds for a later step are pending, not lag; the
    preprocess producer's bound counts only lag on the train stream (preprocess/worker.py), so a
    learner holding a step's worth of one variant never stops the producers of the other."""
    from broker.schemas import Stop
    from broker.streams import Consumer, Producer

    producer = Producer(redis_client, run_id, "train", max_in_flight=2, maxlen=None, count_pending=False)
    for _ in range(2):
        producer.put(Stop(reason="x"))
    assert not producer.wait_for_room(lambda: True)  # 2 unread: full (asked to stop at once)
    assert len(Consumer(redis_client, run_id, "train", "learner0").read(2, 10)) == 2  # held: pending
    assert producer.wait_for_room(lambda: True)

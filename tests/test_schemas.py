import re

import msgpack
import numpy as np
import pytest

from broker.schemas import (
    SCHEMA_VERSION,
    ActorProgress,
    DecodeError,
    PackedArray,
    PreprocessProgress,
    Rollout,
    RolloutGroup,
    ScoredGroup,
    StepReport,
    Stop,
    WeightsPublished,
    decode,
    encode,
)

pytestmark = pytest.mark.unit


def make_group(group_id="actor0-0000001") -> RolloutGroup:
    rollouts = [
        Rollout(
            completion_ids=PackedArray.of([5, 6, 7], "int32"),
            behaviour_logprobs=PackedArray.of([-0.5, -1.25, -0.125], "float32"),
            text="The answer is $\\boxed{3}$.",
            finish_reason="stop",
        ),
        Rollout(
            completion_ids=PackedArray.of([8], "int32"),
            behaviour_logprobs=PackedArray.of([-2.0], "float32"),
            text="x",
            finish_reason="length",
        ),
    ]
    return RolloutGroup(
        run_id="r1",
        group_id=group_id,
        problem_id="p1",
        variant="guided",
        prefix_units=1,
        prefix_tokens=4,
        answer="3",
        prompt_ids=PackedArray.of([1, 2, 3, 4], "int32"),
        rollouts=rollouts,
        temperature=1.0,
        max_new_tokens=64,
        policy_version_start=2,
        policy_version_end=2,
        actor_id="actor0",
        sampled_at=1.5,
        generate_s=0.25,
    )


def test_packed_array_is_raw_little_endian_bytes():
    packed = PackedArray.of([1, 2, 258], "int32")
    assert packed.data == b"\x01\x00\x00\x00\x02\x00\x00\x00\x02\x01\x00\x00"
    assert packed.numpy().tolist() == [1, 2, 258] and len(packed) == 3
    floats = PackedArray.of([0.5, -1.25], "float32")
    assert np.array_equal(floats.numpy(), np.array([0.5, -1.25], dtype=np.float32))


@pytest.mark.parametrize(
    "message",
    [
        make_group(),
        ScoredGroup(
            group=make_group(),
            rewards=[1.0, 0.0],
            advantages=[0.5, -0.5],
            verdicts=["correct", "wrong"],
            worker_id="w0",
        ),
        WeightsPublished(version=3, step=3, broadcast_s=0.1, num_bytes=1000),
        Stop(reason="done"),
        ActorProgress(component="actor0", groups=4, tokens=120, policy_version=2),
        PreprocessProgress(component="preprocess0", groups=3, correct=5, wrong=18, timeout=1, error=0),
        StepReport(
            step=1,
            loss=0.1,
            reward_mean=0.25,
            reward_mean_by_variant={"guided": 0.5},
            solve_rate_by_variant={"guided": 1.0},
            hard_solved_unguided_fraction=0.0,
            tokens_trained=300,
            policy_lag_mean=0.5,
            step_s=1.0,
            data_wait_s=0.1,
            forward_backward_s=0.5,
            optimizer_s=0.1,
            broadcast_s=0.2,
            policy_lags=[0, 1],
            metrics={"entropy": 1.5},
        ),  # fmt: skip
    ],
    ids=lambda m: m.kind,
)
def test_round_trip(message):
    decoded = decode(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_encoding_is_msgpack_not_pickle():
    payload = encode(make_group())
    tree = msgpack.unpackb(payload)
    assert tree["kind"] == "rollout_group" and tree["schema_version"] == SCHEMA_VERSION
    assert isinstance(tree["rollouts"][0]["completion_ids"]["data"], bytes)
    assert not payload.startswith(b"\x80")  # a pickle protocol header


def test_decode_rejects_garbage_with_reason():
    import pickle

    with pytest.raises(DecodeError, match="expected a map"):
        decode(msgpack.packb([1, 2]))
    with pytest.raises(DecodeError, match="not msgpack"):
        decode(pickle.dumps(make_group().model_dump()))
    with pytest.raises(DecodeError, match="schema_version"):
        decode(msgpack.packb({"kind": "stop", "schema_version": 99, "reason": "x"}))
    with pytest.raises(DecodeError, match="reason"):
        decode(msgpack.packb({"kind": "stop", "schema_version": SCHEMA_VERSION}))


def test_unknown_fields_rejected():
    tree = make_group().model_dump(mode="python")
    tree["extra"] = 1
    with pytest.raises(DecodeError, match="extra"):
        decode(msgpack.packb(tree, use_bin_type=True))


def test_progress_is_typed():
    """A heartbeat's counters are fields, not string keys: a missing or negative one does not decode."""
    with pytest.raises(DecodeError, match="policy_version"):
        decode(msgpack.packb({"kind": "actor_progress", "schema_version": SCHEMA_VERSION, "component": "actor0",
                              "groups": 1, "tokens": 2}))  # fmt: skip
    with pytest.raises(DecodeError, match="greater than or equal"):
        decode(msgpack.packb({"kind": "preprocess_progress", "schema_version": SCHEMA_VERSION,
                              "component": "p", "groups": -1, "correct": 0, "wrong": 0, "timeout": 0,
                              "error": 0}))  # fmt: skip


def _scored() -> ScoredGroup:
    return ScoredGroup(group=make_group(), rewards=[1.0, 0.0], advantages=[0.5, -0.5],
                       verdicts=["correct", "wrong"], worker_id="w0")  # fmt: skip


def _tampered(message, change) -> bytes:
    """``message`` encoded, with ``change`` applied to its msgpack tree: what a buggy or hostile
    producer could write, which the model's own constructor would not let through."""
    tree = msgpack.unpackb(encode(message), raw=False)
    change(tree)
    return msgpack.packb(tree, use_bin_type=True)


def _rollout(tree, i=0):
    return (tree["group"] if "group" in tree else tree)["rollouts"][i]


@pytest.mark.parametrize(
    ("message", "change", "reason"),
    [
        (make_group(), lambda t: _rollout(t)["completion_ids"].update(data=b"\x01\x00\x00\x00\x02"),
         "5 bytes are not a whole number of int32 items"),
        (make_group(), lambda t: _rollout(t)["behaviour_logprobs"].update(data=np.float32([-0.5]).tobytes()),
         "1 behaviour logprobs for 3 tokens"),
        (make_group(), lambda t: _rollout(t)["behaviour_logprobs"].update(
            data=np.float32([-0.5, np.nan, -0.1]).tobytes()), "every one finite"),
        (make_group(), lambda t: _rollout(t)["completion_ids"].update(
            dtype="float32", data=np.float32([1, 2, 3]).tobytes()), "integer token ids"),
        (make_group(), lambda t: t.update(rollouts=[]), "at least 1 item"),
        (make_group(), lambda t: t.update(temperature=float("inf")), "finite number"),
        (_scored(), lambda t: t.update(rewards=[1.0]), "2 rollouts but {'rewards': 1}"),
        (_scored(), lambda t: t.update(advantages=[0.5, -0.5, 0.0], verdicts=["wrong"]),
         "2 rollouts but {'advantages': 3, 'verdicts': 1}"),
        (_scored(), lambda t: t.update(advantages=[float("nan"), 0.0]), "finite number"),
    ],
)  # fmt: skip
def test_decode_checks_fields_against_each_other(message, change, reason):
    with pytest.raises(DecodeError, match=re.escape(reason)):
        decode(_tampered(message, change))


def test_decode_refuses_a_payload_over_the_cap_before_unpacking():
    payload = encode(make_group())
    assert decode(payload, max_bytes=len(payload)) == make_group()
    with pytest.raises(DecodeError, match=rf"{len(payload)} bytes, over the {len(payload) - 1}-byte cap"):
        decode(payload, max_bytes=len(payload) - 1)

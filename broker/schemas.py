"""The wire format: every message that crosses a process, defined once.

Each message is a pydantic model tagged with ``kind`` and ``schema_version``. Encoding is msgpack
with arrays as raw little-endian bytes (``PackedArray``); nothing is pickled, nothing evaluated.
This module imports no torch, ray, vllm or deepspeed.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION = (
    2  # 2: RolloutGroup.position, pair, seed, temperature, max_new_tokens; typed progress, step reports
)

_DTYPES = {"int32": "<i4", "int64": "<i8", "float32": "<f4", "float64": "<f8"}
_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in _DTYPES.items()}


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataMessage(Message):
    """A message that carries training data: no NaN or infinity in any of its numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PackedArray(Message):
    """A 1-D numeric array as raw little-endian bytes."""

    dtype: Literal["int32", "int64", "float32", "float64"]
    data: bytes

    @classmethod
    def of(cls, values, dtype: str) -> PackedArray:
        array = np.ascontiguousarray(np.asarray(values, dtype=_DTYPES[dtype]).reshape(-1))
        return cls(dtype=dtype, data=array.tobytes())

    @model_validator(mode="after")
    def _whole_items(self) -> PackedArray:
        if len(self.data) % _ITEMSIZE[self.dtype]:
            raise ValueError(f"{len(self.data)} bytes are not a whole number of {self.dtype} items")
        return self

    def numpy(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=_DTYPES[self.dtype])

    def __len__(self) -> int:
        return len(self.data) // _ITEMSIZE[self.dtype]


class Rollout(DataMessage):
    completion_ids: PackedArray = Field(description="Sampled tokens, int32, shape [T].")
    behaviour_logprobs: PackedArray = Field(
        description="float32 [T]: log-probability of each sampled token under the sampling policy."
    )
    text: str = Field(description="Decoded completion.")
    finish_reason: str = Field(description="'stop' (end token) or 'length' (budget reached).")
    version_from: list[tuple[int, int]] = Field(
        default_factory=list,
        description="(first token index, policy version) where the version that sampled the tokens "
        "changed (continuous generation: weights load between decoding steps); empty: every token "
        "was sampled under the group's policy_version_start.",
    )


class RolloutGroup(DataMessage):
    """One prompt's G rollouts, as an actor produced them."""

    kind: Literal["rollout_group"] = "rollout_group"
    schema_version: int = SCHEMA_VERSION
    run_id: str
    group_id: str = Field(description="Unique in the run: '<actor_id>-<incarnation>-<position>'.")
    problem_id: str
    variant: Literal["unguided", "guided", "easy"]
    position: int = Field(
        -1, ge=-1, description="The prompt's position in the run's sampler (-1: outside it)."
    )
    pair: int | None = Field(
        None,
        description="Shared by a problem's unguided and guided groups drawn together (data.pair_variants).",
    )
    seed: int | None = Field(None, ge=0, description="Sampling seed of the request; rollout i used seed + i.")
    prefix_units: int = Field(0, ge=0, description="Oracle solution steps in the prompt (0 when unguided).")
    prefix_tokens: int = Field(0, ge=0, description="Tokens of those steps.")
    answer: str = Field(description="Gold answer, as the dataset writes it.")
    prompt_ids: PackedArray = Field(description="Prompt tokens, int32, shape [P]; chat template included.")
    rollouts: list[Rollout] = Field(min_length=1)
    temperature: float = Field(gt=0, description="Sampling temperature: the learner's logprobs use the same.")
    max_new_tokens: int = Field(
        ge=1, description="The completion budget the rollouts were sampled under, tokens."
    )
    policy_version_start: int = Field(ge=0, description="Weight version when the group's sampling began.")
    policy_version_end: int = Field(
        ge=0, description="Weight version when it ended (equal unless an update landed)."
    )
    actor_id: str
    sampled_at: float = Field(description="Unix time the group was written.")
    generate_s: float = Field(ge=0, description="Engine wall time of the call that sampled this group, s.")

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> RolloutGroup:
        """Per rollout: integer token ids, one behaviour logprob each, every logprob finite and <= 0
        (checked over the whole group at once: decoding is on the broker's hot path)."""
        for i, r in enumerate(self.rollouts):
            if r.completion_ids.dtype not in ("int32", "int64"):
                raise ValueError(
                    f"rollout {i}: completion_ids are integer token ids, not {r.completion_ids.dtype}"
                )
            if len(r.behaviour_logprobs) != len(r.completion_ids):
                raise ValueError(
                    f"rollout {i}: {len(r.behaviour_logprobs)} behaviour logprobs for {len(r.completion_ids)} tokens"
                )
            if r.version_from and not (
                r.version_from[0][0] == 0
                and all(
                    a[0] < b[0] and a[1] < b[1]
                    for a, b in zip(r.version_from, r.version_from[1:], strict=False)
                )
                and r.version_from[-1][0] < max(1, len(r.completion_ids))
                and self.policy_version_start <= r.version_from[0][1]
                and r.version_from[-1][1] <= self.policy_version_end
            ):
                raise ValueError(
                    f"rollout {i}: version_from {r.version_from} is not a rising run of (token index, "
                    f"version) from index 0, within its {len(r.completion_ids)} tokens and versions "
                    f"{self.policy_version_start}..{self.policy_version_end}"
                )
        for dtype in {r.behaviour_logprobs.dtype for r in self.rollouts}:
            data = b"".join(
                r.behaviour_logprobs.data for r in self.rollouts if r.behaviour_logprobs.dtype == dtype
            )
            logprobs = np.frombuffer(data, dtype=_DTYPES[dtype])
            # one pass: NaN fails every comparison; -inf is caught by the finite sum
            if logprobs.size and not (logprobs.max() <= 1e-3 and np.isfinite(logprobs.sum())):
                raise ValueError("behaviour_logprobs: every one finite and <= 0")
        return self


class ScoredGroup(DataMessage):
    """A rollout group with rewards and advantages: the learner's unit of data."""

    kind: Literal["scored_group"] = "scored_group"
    schema_version: int = SCHEMA_VERSION
    group: RolloutGroup
    rewards: list[float] = Field(description="One reward per rollout, from math-verify (1 correct, 0 not).")
    advantages: list[float] = Field(description="One advantage per rollout, shared by all its tokens.")
    verdicts: list[Literal["correct", "wrong", "timeout", "error"]]
    worker_id: str

    @model_validator(mode="after")
    def _one_score_per_rollout(self) -> ScoredGroup:
        n = len(self.group.rollouts)
        counts = {
            "rewards": len(self.rewards),
            "advantages": len(self.advantages),
            "verdicts": len(self.verdicts),
        }
        wrong = {name: count for name, count in counts.items() if count != n}
        if wrong:
            raise ValueError(f"{n} rollouts but {wrong}")
        return self


class WeightsPublished(Message):
    """The learner finished a step; actors now hold weights of ``version``."""

    kind: Literal["weights_published"] = "weights_published"
    schema_version: int = SCHEMA_VERSION
    version: int = Field(ge=0)
    step: int = Field(ge=0)
    broadcast_s: float = Field(ge=0, description="Wall time of the broadcast, s.")
    num_bytes: int = Field(ge=0)


class StepReport(Message):
    """One learner step, for the launcher's progress line and the Prometheus exporter. The fields
    are the contract; ``metrics`` holds every other number of the step (metrics.jsonl has them all)."""

    kind: Literal["step_report"] = "step_report"
    schema_version: int = SCHEMA_VERSION
    step: int = Field(ge=0)
    loss: float
    reward_mean: float = Field(description="Over every rollout of the step's groups, before any filter.")
    reward_mean_by_variant: dict[str, float] = Field(default_factory=dict)
    solve_rate_by_variant: dict[str, float] = Field(
        default_factory=dict, description="Per variant: share of the step's groups with a success."
    )
    hard_solved_unguided_fraction: float | None = Field(
        None, description="Share of the hard set with an unguided success in the trailing window."
    )
    tokens_trained: float = Field(ge=0)
    policy_lag_mean: float = Field(description="Versions behind, over the trained groups.")
    step_s: float = Field(ge=0)
    data_wait_s: float = Field(ge=0)
    forward_backward_s: float = Field(ge=0)
    optimizer_s: float = Field(ge=0)
    broadcast_s: float = Field(ge=0)
    policy_lags: list[int] = Field(
        default_factory=list, description="Per trained group: versions behind, >= 0."
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="Every other number of the step.")


class ActorProgress(Message):
    """An actor's heartbeat and counters (cumulative since it started), every few seconds."""

    kind: Literal["actor_progress"] = "actor_progress"
    schema_version: int = SCHEMA_VERSION
    component: str = Field(description="'actor<i>'.")
    groups: int = Field(ge=0, description="Rollout groups written.")
    tokens: int = Field(ge=0, description="Completion tokens generated.")
    policy_version: int = Field(ge=0, description="The weight version the engine holds.")


class PreprocessProgress(Message):
    """A preprocess worker's heartbeat and counters (cumulative since it started)."""

    kind: Literal["preprocess_progress"] = "preprocess_progress"
    schema_version: int = SCHEMA_VERSION
    component: str = Field(description="'preprocess<i>'.")
    groups: int = Field(ge=0, description="Groups scored and published.")
    correct: int = Field(ge=0)
    wrong: int = Field(ge=0)
    timeout: int = Field(ge=0)
    error: int = Field(ge=0)


class LearnerProgress(Message):
    """The learner's heartbeat: it is alive, and in which phase of which step."""

    kind: Literal["learner_progress"] = "learner_progress"
    schema_version: int = SCHEMA_VERSION
    component: str = Field(description="'learner'.")
    step: int = Field(ge=0, description="Optimizer steps done.")
    phase: Literal["collect", "train", "broadcast", "checkpoint", "idle"]


Progress = (ActorProgress, PreprocessProgress, LearnerProgress)  # isinstance(message, Progress): a heartbeat


class ScaleRequest(Message):
    """Resize a pool of a running run (``pope scale``)."""

    kind: Literal["scale_request"] = "scale_request"
    schema_version: int = SCHEMA_VERSION
    pool: Literal["actors", "preprocess"]
    size: int = Field(ge=1, le=4096)


class Stop(Message):
    kind: Literal["stop"] = "stop"
    schema_version: int = SCHEMA_VERSION
    reason: str


class DeadLetter(Message):
    """An entry a consumer could not process, set aside with the reason."""

    kind: Literal["dead_letter"] = "dead_letter"
    schema_version: int = SCHEMA_VERSION
    stream: str
    entry_id: str
    reason: str
    consumer: str
    payload: bytes = Field(description="The entry's raw bytes, as read.")


AnyMessage = Annotated[
    RolloutGroup
    | ScoredGroup
    | WeightsPublished
    | StepReport
    | ActorProgress
    | PreprocessProgress
    | LearnerProgress
    | ScaleRequest
    | Stop
    | DeadLetter,
    Field(discriminator="kind"),
]
_ANY = TypeAdapter(AnyMessage)


class DecodeError(ValueError):
    """Bytes that are not a valid message of this schema."""


def encode(message: Message) -> bytes:
    return msgpack.packb(message.model_dump(mode="python"), use_bin_type=True)


def decode(payload: bytes, max_bytes: int | None = None) -> Message:
    """The message in ``payload``, validated (each field, and the fields against each other); a
    payload over ``max_bytes`` is refused before it is unpacked."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise DecodeError(f"{len(payload)} bytes, over the {max_bytes}-byte cap (broker.max_message_bytes)")
    try:
        tree = msgpack.unpackb(payload, raw=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise DecodeError(f"not msgpack: {exc}") from exc
    if not isinstance(tree, dict):
        raise DecodeError(f"expected a map, got {type(tree).__name__}")
    version = tree.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DecodeError(f"schema_version {version!r}, this build reads {SCHEMA_VERSION}")
    try:
        return _ANY.validate_python(tree)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc

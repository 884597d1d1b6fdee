"""Each component built as a plain class, without Ray, around a real Redis: the actor (HF engine, the
tiny model), the preprocess worker (real math-verify) and the learner (real DeepSpeed), on the
streams that join them. A change to one component is checked here in seconds, without the pipeline."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from broker.accounting import read_all, unacked_ids
from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
from broker.streams import Producer, ensure_groups
from pope.config import load_config
from pope.datasets import run_problems

pytestmark = pytest.mark.integration


@pytest.fixture
def config(redis_server, tmp_path):
    run_id = "c" + uuid.uuid4().hex[:8]
    return load_config(
        "configs/demo_cpu_hf.yaml",
        [f"run.run_id={run_id}", f"run.output_dir={tmp_path}", "actors.max_new_tokens=12",
         "broker.max_groups_in_flight=64", "checkpoint.every=0"],
    )  # fmt: skip


def _put_all(actor, groups):
    for group in groups:
        actor.producer.put(group, (actor.actor_id, group.position + 1))


def test_actors_claim_positions_and_a_restarted_actor_asks_what_it_had_not_written(
    config, redis_server, redis_client, tiny_model_path
):
    from actors.actor import RolloutActor

    ensure_groups(redis_client, config.run.run_id)
    problems = run_problems(config.data, config.run.seed)
    first = RolloutActor(config.for_actors(), 0, tiny_model_path, redis_server.url, problems)
    second = RolloutActor(config.for_actors(), 1, tiny_model_path, redis_server.url, problems)
    a, b = first.generate_once(), second.generate_once()
    assert [g.position for g in a] == [0, 1, 2, 3] and [g.position for g in b] == [4, 5, 6, 7]
    assert Counter(g.variant for g in a) == {"unguided": 2, "guided": 2}  # one exact block each
    seeds = [g.seed for g in a + b]
    assert len(set(seeds)) == 8 and all(g.temperature == 1.0 and g.max_new_tokens == 12 for g in a)
    _put_all(first, a)
    again = first.generate_once()  # positions 8..11; only two of them reach the stream
    _put_all(first, again[:2])
    first.close()
    restarted = RolloutActor(config.for_actors(), 0, tiny_model_path, redis_server.url, problems)
    redone = restarted.generate_once()
    assert [g.position for g in redone] == [10, 11]  # the two it claimed and did not write, alone
    _put_all(restarted, redone)
    assert [g.position for g in restarted.generate_once()] == [12, 13, 14, 15]  # then a new claim
    assert redone[0].problem_id == again[2].problem_id and redone[0].variant == again[2].variant
    assert redone[0].seed == again[2].seed and redone[0].group_id != again[2].group_id  # new incarnation
    for actor in (second, restarted):
        actor.close()


def _group(run_id: str, gid: str, variant: str, texts: list[str], answer: str = "7") -> RolloutGroup:
    rollouts = [
        Rollout(completion_ids=PackedArray.of([5, 6, 7], "int32"),
                behaviour_logprobs=PackedArray.of([-1.0, -1.5, -0.5], "float32"), text=t, finish_reason="stop")
        for t in texts
    ]  # fmt: skip
    return RolloutGroup(
        run_id=run_id, group_id=gid, problem_id=gid, variant=variant, answer=answer,
        prompt_ids=PackedArray.of([3, 4, 5, 6], "int32"), rollouts=rollouts, temperature=1.0,
        max_new_tokens=12, policy_version_start=0, policy_version_end=0, actor_id="t",
        sampled_at=0.0, generate_s=0.0,
    )  # fmt: skip


def test_preprocess_worker_scores_and_publishes(config, redis_server, redis_client):
    from preprocess.worker import PreprocessWorker

    run_id = config.run.run_id
    ensure_groups(redis_client, run_id)
    rollouts = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=None)
    texts = ["so $\\boxed{7}$", "it is $\\boxed{8}$", "no answer", "$\\boxed{7}$ again"]
    rollouts.put(_group(run_id, "g0", "unguided", texts))
    worker = PreprocessWorker(config.for_preprocess(), 0, redis_server.url)
    try:
        assert worker.process_once() == 1
    finally:
        worker.close()
    (scored,) = [m for _, m in read_all(redis_client, run_id, "train")]
    assert scored.rewards == [1.0, 0.0, 0.0, 1.0]
    assert scored.verdicts == ["correct", "wrong", "wrong", "correct"]
    # r - mean of the group (preprocess.scale_by_std is off by default): mean 0.5, by hand
    assert scored.advantages == pytest.approx([0.5, -0.5, -0.5, 0.5])
    assert unacked_ids(redis_client, run_id, "rollouts") == set()


def test_learner_trains_exact_steps_and_holds_the_surplus(
    config, redis_server, redis_client, tiny_model_path, monkeypatch
):
    """Five unguided and two guided groups arrive: the one step trains 2 + 2 and holds the rest,
    unacknowledged, for a later step; solve rates count every group of the step. The learner reads
    no more than the step still needs (the last entry stays unread), and its surplus counts against
    the actors' pool-wide bound (its field of the generating hash)."""
    from broker.embedded import free_port
    from learner.trainer import Learner

    # the one-rank group's variables, set here so that they leave with the test: processes the later
    # tests start inherit this environment, and a MASTER_PORT this process listens on would collide
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():  # fmt: skip
        monkeypatch.setenv(key, value)

    run_id = config.run.run_id
    ensure_groups(redis_client, run_id)
    train = Producer(redis_client, run_id, "train", max_in_flight=None, maxlen=None)
    arrivals = [("u0", "unguided"), ("u1", "unguided"), ("u2", "unguided"), ("g0", "guided"), ("u3", "unguided"),
                ("u4", "unguided"), ("u0", "unguided"), ("g1", "guided"), ("u5", "unguided")]  # fmt: skip
    for i, (gid, variant) in enumerate(arrivals):
        texts = ["$\\boxed{7}$", "$\\boxed{1}$"] if gid in ("u0", "g1") and i != 6 else ["$\\boxed{1}$"] * 2
        rewards = [float("7" in t) for t in texts]
        train.put(ScoredGroup(group=_group(run_id, gid, variant, texts), rewards=rewards,
                              advantages=[r - sum(rewards) / 2 for r in rewards], verdicts=["wrong", "wrong"],
                              worker_id="w"))  # fmt: skip
    # one group generated and not yet scored: the buffer lag the step's line reports
    Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=None).put(
        _group(run_id, "r0", "unguided", ["x", "y"])
    )
    run_dir = config.run.output_dir / run_id
    learner = Learner(
        config.for_learner(), tiny_model_path, redis_server.url, str(run_dir), [], num_hard_problems=64
    )
    surplus, reset = [], learner.surplus.reset
    learner.surplus.reset = lambda count=0: (surplus.append(count), reset(count))
    try:
        result = learner.run(1)
    finally:
        learner.close()
    line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    trained = sorted(g["group_id"] for g in line["groups"])
    assert trained == ["g0", "g1", "u0", "u1"]
    assert line["solve_rate_unguided"] == 0.5 and line["solve_rate_guided"] == 0.5
    assert line["hard_solved_unguided_fraction"] == 1 / 64
    # waiting: the unscored r0 and u5, never read (u2 u3 u4 are held, not waiting)
    assert line["buffer_lag_groups"] == 2.0 and line["groups_held"] == 3.0
    assert (
        surplus == [3] and redis_client.hget(f"pope:{run_id}:generating", "learner") is None
    )  # gone at stop
    assert result["trained_group_ids"] == ["u0", "u1", "g0", "g1"]
    # held for a later step: u2 u3 u4 stay pending; the second copy of u0 (read while holding) is a duplicate
    assert result["skipped_group_ids"]["duplicate"] == ["u0"]
    held = {m.group.group_id for e, m in read_all(redis_client, run_id, "train")
            if e in unacked_ids(redis_client, run_id, "train")}  # fmt: skip
    assert {"u2", "u3", "u4"} <= held and not held & {"g0", "g1", "u0", "u1"}


def test_a_built_in_model_reaches_a_node_that_cannot_see_the_drivers_folder(
    tiny_model_path, tmp_path, redis_client
):
    from broker.streams import fetch_files, stage_files
    from pope.models.folder import ModelFolder

    files = ModelFolder.read_files(tiny_model_path)
    key = stage_files(redis_client, "c" + uuid.uuid4().hex[:8], "model:x", files)
    assert ModelFolder(tiny_model_path, key).local(tmp_path) == tiny_model_path  # seen here: kept

    def fetch(k):
        return fetch_files(redis_client, k)

    elsewhere = ModelFolder(str(tmp_path / "gone" / "tiny"), key)  # the driver's path, absent on this node
    local = elsewhere.local(tmp_path / "cache", fetch)
    assert local.startswith(str(tmp_path / "cache")) and elsewhere.local(tmp_path / "cache", fetch) == local
    for name, data in files.items():
        with open(f"{local}/{name}", "rb") as handle:
            assert handle.read() == data
    with pytest.raises(FileNotFoundError, match="every node"):
        ModelFolder(str(tmp_path / "gone")).local(tmp_path)


def test_a_large_built_in_model_is_not_staged_and_the_run_says_so(tmp_path, redis_client):
    """SmolLM2 (517 MiB) is over the staging limit: the launcher leaves it on the driver's storage
    and prints that a cluster must see it, instead of refusing the run (a sparse file stands in)."""
    from orchestrator.launcher import _stage_model
    from pope.config import load_config
    from pope.models.folder import MAX_STAGED_BYTES

    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir(), small.mkdir()
    with open(big / "model.safetensors", "wb") as handle:
        handle.truncate(MAX_STAGED_BYTES + 1)
    (small / "config.json").write_text("{}")
    config = load_config(None, ["model.path=builtin:tiny-qwen2"])
    said: list[str] = []
    run_id = "s" + uuid.uuid4().hex[:8]
    assert _stage_model(config, str(big), redis_client, run_id, said.append).files_key is None
    assert len(said) == 1 and "not staged" in said[0] and str(big) in said[0]
    staged = _stage_model(config, str(small), redis_client, run_id, said.append)
    assert staged.files_key is not None and len(said) == 1
    user = load_config(None, [f"model.path={small}"])
    assert _stage_model(user, str(small), redis_client, run_id, said.append).files_key is None


@pytest.mark.unit
def test_resume_keeps_the_metrics_lines_its_checkpoint_holds_and_drops_a_torn_last_line():
    from learner.trainer import metrics_lines_held

    lines = [json.dumps({"step": s, "loss": 0.1 * s}) for s in (1, 2, 3)]
    whole = "".join(line + "\n" for line in lines)
    assert metrics_lines_held(whole, 2) == (lines[:2], 0)  # step 3 is not in the checkpoint
    assert metrics_lines_held(whole, 3) == (lines, 0)
    torn = whole + '{"step": 4, "lo'  # the crash cut the write of step 4
    assert metrics_lines_held(torn, 3) == (lines, len('{"step": 4, "lo'))
    assert metrics_lines_held("", 3) == ([], 0)
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        metrics_lines_held(lines[0] + "\n{not json\n" + lines[2] + "\n", 3)


def test_a_waiting_worker_keeps_its_entries_and_a_frozen_one_loses_them(config, redis_server, redis_client):
    """A worker that read groups and waits on backpressure longer than claim_idle_s keeps them fresh
    (another worker claims none); once it stops beating (frozen, dead), they are claimed."""
    import threading

    from broker.streams import Consumer
    from preprocess.worker import PreprocessWorker

    run_id = config.run.run_id
    ensure_groups(redis_client, run_id)
    settings = config.for_preprocess().model_copy(
        update={"preprocess": config.preprocess.model_copy(update={"claim_idle_s": 1.0})}
    )
    train = Producer(redis_client, run_id, "train", max_in_flight=None, maxlen=None)
    scored = ScoredGroup(group=_group(run_id, "full", "unguided", ["a", "b"]), rewards=[1.0, 0.0],
                         advantages=[0.5, -0.5], verdicts=["correct", "wrong"], worker_id="t")  # fmt: skip
    for _ in range(config.broker.max_groups_in_flight):  # the learner reads nothing: no room downstream
        train.put(scored)
    rollouts = Producer(redis_client, run_id, "rollouts", max_in_flight=None, maxlen=None)
    for i in range(2):
        rollouts.put(_group(run_id, f"g{i}", "unguided", ["$\\boxed{7}$", "8"]))
    worker = PreprocessWorker(settings, 0, redis_server.url)
    loop = threading.Thread(target=worker.run)
    loop.start()
    other = Consumer(redis_client, run_id, "rollouts", "preprocess1")
    try:
        deadline = time.monotonic() + 30
        while (
            len(unacked_ids(redis_client, run_id, "rollouts"))
            and not redis_client.xpending(f"pope:{run_id}:rollouts", "preprocess")["pending"]
        ):
            assert time.monotonic() < deadline, "the worker read nothing"
            time.sleep(0.05)
        time.sleep(2.5)  # 2.5 x claim_idle_s in the backpressure wait
        assert other.claim_stale(1000, 10) == []
        worker.keepalive.stop()  # as if frozen: no more beats
        time.sleep(1.5)
        assert sorted(e.message.group_id for e in other.claim_stale(1000, 10)) == ["g0", "g1"]
    finally:
        worker.stop()
        loop.join(timeout=30)
        worker.close()


def test_an_actor_beats_while_one_engine_call_lasts_longer_than_its_interval(
    config, redis_server, redis_client, tiny_model_path
):
    """Liveness is apart from progress: during a 3 s engine call (the real engine behind a delay, as
    a long generation would be) the actor still reports every progress_interval_s (0.5 s here)."""
    import threading

    from actors.actor import RolloutActor
    from broker.schemas import ActorProgress, decode
    from broker.streams import FIELD, ControlChannel

    ensure_groups(redis_client, config.run.run_id)
    problems = run_problems(config.data, config.run.seed)
    settings = config.for_actors().model_copy(update={"progress_interval_s": 0.5})
    actor = RolloutActor(settings, 0, tiny_model_path, redis_server.url, problems)
    real_generate, window = actor.engine.generate, []

    def slow_generate(*args, **kwargs):
        window.append(time.time())
        time.sleep(3.0)
        out = real_generate(*args, **kwargs)
        window.append(time.time())
        actor.stop()  # one call is enough
        return out

    actor.engine.generate = slow_generate
    control = ControlChannel(redis_client, config.run.run_id)
    loop = threading.Thread(target=actor.run)
    loop.start()
    loop.join(timeout=120)
    actor.close()
    assert not loop.is_alive() and len(window) == 2
    beats = [
        int(entry_id.decode().split("-")[0]) / 1000
        for entry_id, fields in redis_client.xrange(control.key)
        if isinstance(decode(fields[FIELD]), ActorProgress)
    ]
    during = [t for t in beats if window[0] + 0.2 < t < window[0] + 3.0]
    assert len(during) >= 4, (window, beats)  # every 0.5 s of the 3 s call, less the edges


def test_a_hung_worker_loop_stops_its_beats_and_loses_its_entries(
    config, redis_server, redis_client, monkeypatch
):
    """The keep-alive thread vouches for the loop only while the loop's work can last (the
    verifier's deadline per rollout, plus a grace): a loop stuck past that stops beating, so its
    entries are claimed and its heartbeat goes silent."""
    import threading

    import preprocess.worker as worker_module
    from broker.schemas import PreprocessProgress, decode
    from broker.streams import FIELD, Consumer, ControlChannel

    monkeypatch.setattr(worker_module, "LOOP_GRACE_S", 0.5)
    run_id = config.run.run_id
    ensure_groups(redis_client, run_id)
    settings = config.for_preprocess().model_copy(
        update={
            "preprocess": config.preprocess.model_copy(update={"claim_idle_s": 1.0, "verify_timeout_s": 0.2}),
            "progress_interval_s": 0.1,
        }
    )
    Producer(redis_client, run_id, "rollouts", None, None).put(_group(run_id, "g0", "unguided", ["7", "8"]))
    worker = worker_module.PreprocessWorker(settings, 0, redis_server.url)
    release = threading.Event()

    def stuck(group):  # as a deadlocked loop would be; once released, the group is set aside
        release.wait()
        raise ValueError("released by the test")

    worker.score_group = stuck
    loop = threading.Thread(target=worker.run)
    loop.start()
    other = Consumer(redis_client, run_id, "rollouts", "preprocess1")
    control = ControlChannel(redis_client, run_id)
    try:
        deadline, claimed = time.monotonic() + 15, []
        while not claimed:
            assert time.monotonic() < deadline, "the stuck worker's entry was never claimable"
            time.sleep(0.2)
            claimed = other.claim_stale(1000, 10)
        assert [e.message.group_id for e in claimed] == ["g0"]
        beats = [int(i.decode().split("-")[0]) for i, f in redis_client.xrange(control.key)
                 if isinstance(decode(f[FIELD]), PreprocessProgress)]  # fmt: skip
        seconds, micros = redis_client.time()
        assert beats and seconds * 1000 + micros / 1000 - beats[-1] > 800  # silent since it went stuck
    finally:
        worker.stop()
        release.set()
        loop.join(timeout=30)
        worker.close()


def _beats(redis_client, run_id: str, kind) -> list[tuple[float, object]]:
    """(seconds since the epoch, message) of every ``kind`` heartbeat on the run's control stream."""
    from broker.schemas import decode
    from broker.streams import FIELD, ControlChannel

    entries = redis_client.xrange(ControlChannel(redis_client, run_id).key)
    messages = [(int(i.decode().split("-")[0]) / 1000, decode(f[FIELD])) for i, f in entries]
    return [(t, m) for t, m in messages if isinstance(m, kind)]


def test_an_actor_whose_engine_call_runs_past_its_deadline_goes_silent(
    config, redis_server, redis_client, tiny_model_path, monkeypatch
):
    """A hung engine call is not vouched for forever: the keep-alive thread beats while the call is
    within actors.engine_call_timeout_s (1 s here) plus the grace (0.5 s), then stops, so the
    launcher's heartbeat deadline names the actor."""
    import threading

    import actors.actor as actor_module
    from broker.schemas import ActorProgress

    monkeypatch.setattr(actor_module, "LOOP_GRACE_S", 0.5)
    ensure_groups(redis_client, config.run.run_id)
    problems = run_problems(config.data, config.run.seed)
    settings = config.for_actors().model_copy(
        update={
            "progress_interval_s": 0.2,
            "actors": config.actors.model_copy(update={"engine_call_timeout_s": 1.0}),
        }
    )
    actor = actor_module.RolloutActor(settings, 0, tiny_model_path, redis_server.url, problems)
    real_generate, window = actor.engine.generate, []

    def hung_generate(*args, **kwargs):
        window.append(time.time())
        time.sleep(4.0)
        actor.stop()
        return real_generate(*args, **kwargs)

    actor.engine.generate = hung_generate
    loop = threading.Thread(target=actor.run)
    loop.start()
    loop.join(timeout=120)
    actor.close()
    assert not loop.is_alive() and window
    beats = [t for t, _ in _beats(redis_client, config.run.run_id, ActorProgress)]
    start = window[0]
    assert [t for t in beats if start + 0.3 < t < start + 1.2], beats  # within its deadline: beating
    # past 1 + 0.5 s (and a second's slack for a loaded machine) and until the call ends: silent
    assert not [t - start for t in beats if start + 2.5 < t < start + 4.0]


def _learner_with_a_hung_step(
    settings, model_path: str, redis_url: str, run_dir: str, port: int, window
) -> None:
    """In a process of its own (DeepSpeed keeps one learner's groups per process): a learner whose
    training step sleeps 5 s before the real one, as a hung step would; appends the step's start."""
    import os

    import learner.trainer as trainer_module

    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    trainer_module.LOOP_GRACE_S = 0.5
    learner = trainer_module.Learner(settings, model_path, redis_url, run_dir, [])
    real_step = learner.policy.train_step

    def hung_step(groups):
        window.append(time.time())
        time.sleep(5.0)
        return real_step(groups)

    learner.policy.train_step = hung_step
    try:
        learner.run(1)
    finally:
        learner.close()


def test_the_learner_beats_while_it_waits_and_trains_and_goes_silent_when_a_step_hangs(
    config, redis_server, redis_client, tiny_model_path
):
    """The learner has a heartbeat too: while it waits for data (2 s) and through a step within
    learner.step_timeout_s (1.5 s here) plus the grace (0.5 s); a step that runs past both (5 s)
    silences it, and the launcher's heartbeat deadline then names it."""
    import multiprocessing

    from broker.embedded import free_port
    from broker.schemas import LearnerProgress

    run_id = config.run.run_id
    ensure_groups(redis_client, run_id)
    settings = config.for_learner().model_copy(
        update={
            "progress_interval_s": 0.2,
            "learner": config.learner.model_copy(update={"step_timeout_s": 1.5}),
        }
    )
    context = multiprocessing.get_context("spawn")
    window = context.Manager().list()
    args = (
        settings,
        tiny_model_path,
        redis_server.url,
        str(config.run.output_dir / run_id),
        free_port(),
        window,
    )
    child = context.Process(target=_learner_with_a_hung_step, args=args)
    child.start()
    try:
        deadline = time.monotonic() + 120
        while not _beats(redis_client, run_id, LearnerProgress):  # DeepSpeed is up, the loop has begun
            assert time.monotonic() < deadline and child.is_alive(), "the learner never beat"
            time.sleep(0.1)
        started = time.time()
        time.sleep(2.0)  # no data yet: the learner waits, and says it is alive
        train = Producer(redis_client, run_id, "train", max_in_flight=None, maxlen=None)
        for gid, variant in [("u0", "unguided"), ("u1", "unguided"), ("g0", "guided"), ("g1", "guided")]:
            texts = ["$\\boxed{7}$", "$\\boxed{1}$"]
            train.put(ScoredGroup(group=_group(run_id, gid, variant, texts), rewards=[1.0, 0.0],
                                  advantages=[0.5, -0.5], verdicts=["correct", "wrong"], worker_id="w"))  # fmt: skip
        child.join(timeout=120)
        assert child.exitcode == 0 and len(window) == 1
    finally:
        child.kill()
    beats = _beats(redis_client, run_id, LearnerProgress)
    waiting = [t for t, m in beats if m.phase == "collect" and started < t < started + 2.0]
    assert len(waiting) >= 5, beats  # every 0.2 s of the 2 s wait, less the edges
    start = window[0]
    assert [t for t, m in beats if m.phase == "train" and start < t < start + 1.5], beats
    # past 1.5 + 0.5 s (and a second's slack for a loaded machine) and until the step ends: silent
    assert not [(t - start, m.phase) for t, m in beats if start + 3.0 < t < start + 5.0]


def test_a_per_call_actor_takes_only_the_room_the_pool_leaves(
    config, redis_server, redis_client, tiny_model_path
):
    """Bound 4 (a step): two scored groups wait for the learner on the train stream and another actor
    holds one in its engine, so the actor's call takes one prompt, not prompts_per_call (4), and then
    waits. (Counting only the rollouts stream and its own groups, as before, it wrote 4.) Then the
    learner reads the two (its batch: not counted) and the other actor's count goes stale (it died for
    good): a restarted actor takes the 3 left beside the one group in the rollouts stream."""
    import threading

    from actors.actor import RolloutActor
    from broker.inflight import PoolBound, generating_key
    from broker.streams import Consumer

    run_id = config.run.run_id
    ensure_groups(redis_client, run_id)
    problems = run_problems(config.data, config.run.seed)
    settings = config.for_actors()
    settings = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"max_groups_in_flight": 4})}
    )
    train = Producer(redis_client, run_id, "train", max_in_flight=None, maxlen=None)
    scored = ScoredGroup(group=_group(run_id, "s", "unguided", ["a", "b"]), rewards=[1.0, 0.0],
                         advantages=[0.5, -0.5], verdicts=["correct", "wrong"], worker_id="t")  # fmt: skip
    for _ in range(2):
        train.put(scored)
    assert PoolBound(redis_client, run_id, "actor1", 4, 30.0).reserve(1) == 1

    def one_call(actor) -> list[int]:
        """Run the loop until its first call's groups are written; the prompts of each call."""
        calls, real_generate = [], actor.engine.generate

        def generate(prompt_ids, settings):
            calls.append(len(prompt_ids))
            return real_generate(prompt_ids, settings)

        actor.engine.generate = generate
        written = redis_client.xlen(f"pope:{run_id}:rollouts")
        loop = threading.Thread(target=actor.run)
        loop.start()
        deadline = time.monotonic() + 120
        while not calls or redis_client.xlen(f"pope:{run_id}:rollouts") < written + calls[0]:
            assert time.monotonic() < deadline and loop.is_alive(), "the actor wrote nothing"
            time.sleep(0.05)
        actor.stop()
        loop.join(timeout=60)
        actor.close()
        assert not loop.is_alive()
        assert redis_client.hget(generating_key(run_id), "actor0") is None  # stopped: its field went
        return calls

    assert one_call(RolloutActor(settings, 0, tiny_model_path, redis_server.url, problems)) == [1]
    assert redis_client.xlen(f"pope:{run_id}:rollouts") == 1
    assert len(Consumer(redis_client, run_id, "train", "learner").read(count=2, block_ms=100)) == 2
    seconds, micros = redis_client.time()
    stale_ms = seconds * 1000 + micros // 1000 - 31_000  # generating_stale_s is 30
    redis_client.hset(generating_key(run_id), "actor1", f"1 {stale_ms}")
    assert one_call(RolloutActor(settings, 0, tiny_model_path, redis_server.url, problems)) == [3]
    assert redis_client.xlen(f"pope:{run_id}:rollouts") == 4


def test_an_actor_whose_weight_update_failed_part_way_decodes_nothing_until_a_whole_one_loads(
    config, redis_server, redis_client, tiny_model_path
):
    """A peer of the weight group dying mid-broadcast fails the update after the engine began
    reloading its layers (vLLM leaves meta tensors in those not yet loaded): the loop serves calls
    but generates nothing until the next update loads whole, then goes on."""
    import threading

    from actors.actor import RolloutActor

    ensure_groups(redis_client, config.run.run_id)
    problems = run_problems(config.data, config.run.seed)
    actor = RolloutActor(config.for_actors(), 0, tiny_model_path, redis_server.url, problems)
    calls, real_generate = [], actor.engine.generate

    def generate(prompt_ids, settings):
        calls.append(len(prompt_ids))
        return real_generate(prompt_ids, settings)

    def broken_update(update_info):
        raise RuntimeError("gloo: connection closed by peer")

    actor.engine.generate = generate
    actor.engine.update_weights = broken_update
    with pytest.raises(RuntimeError, match="closed by peer"):
        actor._load_weights(1, {}, 30.0)
    assert actor.weights_whole is False and actor.version == 0
    loop = threading.Thread(target=actor.run)
    loop.start()
    time.sleep(2.0)
    assert calls == [] and loop.is_alive()  # waiting, not decoding on half-loaded layers
    actor.engine.update_weights = lambda update_info: None
    assert actor.update_weights(2, {}, 30.0) is None  # served by the loop between its waits
    deadline = time.monotonic() + 120
    while not calls:
        assert time.monotonic() < deadline and loop.is_alive(), "no generation after a whole update"
        time.sleep(0.05)
    actor.stop()
    loop.join(timeout=60)
    actor.close()
    assert not loop.is_alive() and actor.weights_whole and actor.version == 2

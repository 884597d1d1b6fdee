"""Experiment tracking (learner/tracking.py) with the real packages and no network: TensorBoard
event files read back with tensorboard's EventAccumulator, an MLflow file store read back with
MlflowClient, a W&B offline run read back with wandb's own reader of its run file (`wandb leet
inspect --json`); a tracker that cannot start, and one that raises while logging; and a real
learner step (DeepSpeed-CPU, the tiny model, a real Redis) whose scalars reach TensorBoard."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
from learner.tracking import ROLLOUT_COLUMNS, TRACKERS, Tracking, rollout_rows, step_scalars
from pope.config import LoggingConfig, load_config

# float32-exact values (TensorBoard stores float32), so every comparison is exact
LINES = [
    {"step": 1, "time": 1.8e9, "learner_version": 1, "loss": 0.125, "reward_mean_guided": 0.75,
     "clip_frac_high": 0.0, "nonfinite": False, "weights_checksum_actors": [2.5], "groups": []},
    {"step": 2, "time": 1.8e9, "learner_version": 2, "loss": -0.5, "reward_mean_guided": 0.25,
     "clip_frac_high": 0.0625, "nonfinite": False, "weights_checksum_actors": [2.5], "groups": []},
]  # fmt: skip
# by hand: the numeric fields of each line, less the step (the x axis) and the wall-clock time
EXPECTED = {
    "learner_version": [(1, 1.0), (2, 2.0)],
    "loss": [(1, 0.125), (2, -0.5)],
    "reward_mean_guided": [(1, 0.75), (2, 0.25)],
    "clip_frac_high": [(1, 0.0), (2, 0.0625)],
}


def scored(gid: str, variant: str, prefix_units: int, texts: list[str], rewards: list[float]) -> ScoredGroup:
    rollouts = [
        Rollout(completion_ids=PackedArray.of([5, 6, 7], "int32"),
                behaviour_logprobs=PackedArray.of([-1.0, -1.5, -0.5], "float32"), text=t, finish_reason="stop")
        for t in texts
    ]  # fmt: skip
    group = RolloutGroup(
        run_id="track", group_id=gid, problem_id="p" + gid, variant=variant, answer="7",
        prompt_ids=PackedArray.of([3, 4, 5, 6], "int32"), rollouts=rollouts, temperature=1.0, max_new_tokens=12,
        policy_version_start=0, policy_version_end=0, actor_id="t", sampled_at=0.0, generate_s=0.0,
        prefix_units=prefix_units, prefix_tokens=5 * prefix_units,
    )  # fmt: skip
    verdicts = ["correct" if r else "wrong" for r in rewards]
    return ScoredGroup(
        group=group, rewards=rewards, advantages=[0.0] * len(texts), verdicts=verdicts, worker_id="w"
    )


GROUPS = [
    scored("u0", "unguided", 0, ["so $\\boxed{7}$", "it is | 8\nsurely"], [1.0, 0.0]),
    scored("g0", "guided", 2, ["then 7", "then 9"], [1.0, 0.0]),
]
ALL_ROWS = [  # by hand, from GROUPS
    {"group_id": "u0", "variant": "unguided", "prefix_units": 0, "prefix_tokens": 0,
     "completion": "so $\\boxed{7}$", "reward": 1.0, "verdict": "correct"},
    {"group_id": "u0", "variant": "unguided", "prefix_units": 0, "prefix_tokens": 0,
     "completion": "it is | 8\nsurely", "reward": 0.0, "verdict": "wrong"},
    {"group_id": "g0", "variant": "guided", "prefix_units": 2, "prefix_tokens": 10,
     "completion": "then 7", "reward": 1.0, "verdict": "correct"},
    {"group_id": "g0", "variant": "guided", "prefix_units": 2, "prefix_tokens": 10,
     "completion": "then 9", "reward": 0.0, "verdict": "wrong"},
]  # fmt: skip


def logging_config(trackers: list[str], **options) -> LoggingConfig:
    return LoggingConfig.model_validate({"trackers": trackers, "rollout_table_every": 2, **options})


def run_two_steps(tracking: Tracking, params: dict | None = None) -> None:
    tracking.start(params or {"lr": 0.001, "eps_high": 0.28})
    for line in LINES:
        tracking.log_step(line["step"], line, GROUPS)
    tracking.close()


def tensorboard_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = tensorboard_events(log_dir)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.unit
def test_the_scalars_are_the_lines_numeric_fields_and_the_table_a_seeded_sample_of_rollouts():
    assert step_scalars(LINES[1]) == {key: values[1][1] for key, values in EXPECTED.items()}
    assert rollout_rows(GROUPS, 16, "0:2") == ALL_ROWS  # fewer rollouts than rows: all, in order
    two = rollout_rows(GROUPS, 2, "0:2")
    assert len(two) == 2 and all(row in ALL_ROWS for row in two) and two[0] != two[1]
    assert two == rollout_rows(GROUPS, 2, "0:2")  # the same seed, the same sample
    assert {json.dumps(rollout_rows(GROUPS, 2, f"0:{s}")) for s in range(20)} != {json.dumps(two)}
    assert set(TRACKERS) == set(LoggingConfig.model_fields["trackers"].annotation.__args__[0].__args__)


@pytest.mark.unit
def test_logging_config_names_what_is_wrong():
    with pytest.raises(ValueError, match="names a tracker twice"):
        logging_config(["mlflow", "mlflow"])
    with pytest.raises(ValueError, match="trackers"):
        logging_config(["comet"])
    with pytest.raises(ValueError, match="unknown key"):
        load_config(None, ["logging.wandb.projcet=x"])
    assert load_config(None, ["logging.trackers=[tensorboard,wandb]"]).for_learner().logging.trackers == [
        "tensorboard",
        "wandb",
    ]


@pytest.mark.unit
def test_tensorboard_gets_every_step_scalar_and_the_table_on_its_steps(tmp_path):
    run_two_steps(Tracking(logging_config(["tensorboard"]), tmp_path, "r1"))
    assert tensorboard_scalars(tmp_path / "tensorboard") == EXPECTED
    (table,) = tensorboard_events(tmp_path / "tensorboard").Tensors("rollouts/text_summary")
    assert table.step == 2  # rollout_table_every=2: not on step 1
    text = table.tensor_proto.string_val[0].decode()
    assert text.splitlines()[0] == "| " + " | ".join(ROLLOUT_COLUMNS) + " |"
    assert "| u0 | unguided | 0 | 0 | it is \\| 8\\nsurely | 0.0 | wrong |" in text.splitlines()
    assert "| g0 | guided | 2 | 10 | then 7 | 1.0 | correct |" in text.splitlines()


@pytest.mark.unit
def test_mlflow_file_store_in_the_run_dir_holds_the_metrics_params_and_table(tmp_path):
    from mlflow.tracking import MlflowClient

    run_two_steps(Tracking(logging_config(["mlflow"]), tmp_path, "r1"))
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pope").experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.001", "eps_high": "0.28"}
    for key, expected in EXPECTED.items():
        assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)) == expected
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "rollouts/step_000002.json")).read_text()
    )
    assert table == {"columns": list(ROLLOUT_COLUMNS), "data": [list(row.values()) for row in ALL_ROWS]}
    assert client.list_artifacts(run.info.run_id, "rollouts")[0].path == "rollouts/step_000002.json"


@pytest.mark.integration
def test_wandb_is_offline_without_an_api_key_and_its_run_file_holds_every_step(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # nothing written under ~
        monkeypatch.setenv(variable, str(tmp_path / "home" / variable))
    tracking = Tracking(logging_config(["wandb"], wandb={"project": "pope-test"}), tmp_path, "r1")
    run_two_steps(tracking)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True,
                         text=True, check=True, timeout=120).stdout  # fmt: skip
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["project"] == "pope-test" and run["display_name"] == "r1"
    assert run["config"]["update"]["lr"] == 0.001
    history = [r["history"] for r in records if r["type"] == "history"]
    assert [h["step"]["num"] for h in history] == [1, 2]
    for key, expected in EXPECTED.items():
        assert [(h["step"]["num"], h["item"][key]) for h in history] == expected
    assert "rollouts.path" not in history[0]["item"]  # the table on step 2 only
    (table_file,) = (run_dir / "files").glob("media/table/rollouts_2_*.table.json")
    table = json.loads(table_file.read_text())
    assert table == {"columns": list(ROLLOUT_COLUMNS), "data": [list(row.values()) for row in ALL_ROWS]}
    assert tracking.summary()["errors"] == {} and tracking.summary()["failed_to_start"] == {}


@pytest.mark.unit
def test_a_tracker_that_cannot_start_is_named_in_one_line_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the wandb extra were not installed
    config = logging_config(["wandb", "mlflow", "tensorboard"], mlflow={"tracking_uri": "bogus://nowhere"})
    tracking = Tracking(config, tmp_path, "r1")
    run_two_steps(tracking)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        "tracking: wandb did not start, the run goes on without it: ModuleNotFoundError"
    )
    assert lines[0].endswith("(its package: pip install 'pope[wandb]')")
    assert lines[1].startswith("tracking: mlflow did not start") and "'bogus://nowhere'" in lines[1]
    assert set(tracking.summary()["failed_to_start"]) == {"wandb", "mlflow"}
    assert tensorboard_scalars(tmp_path / "tensorboard") == EXPECTED


@pytest.mark.unit
def test_a_tracker_that_raises_while_logging_is_counted_and_turned_off(tmp_path, capsys):
    tracking = Tracking(logging_config(["mlflow", "tensorboard"]), tmp_path, "r1")
    tracking.start({})
    tracking.log_step(1, LINES[0], GROUPS)
    shutil.rmtree(tmp_path / "mlruns")  # the store vanishes under the running tracker
    tracking.log_step(2, LINES[1], GROUPS)
    tracking.log_step(3, {**LINES[1], "step": 3}, GROUPS)
    tracking.close()
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("tracking: mlflow failed while logging step 2 and is turned off: ")
    assert tracking.error_count == 1 and list(tracking.summary()["errors"]) == ["mlflow"]
    assert tensorboard_scalars(tmp_path / "tensorboard")["loss"] == [(1, 0.125), (2, -0.5), (3, -0.5)]


def _run_learner(settings, model_path: str, redis_url: str, run_dir: str, port: int, out) -> None:
    """In a process of its own (DeepSpeed keeps one learner's groups per process): two steps."""
    import os

    from learner.trainer import Learner

    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    learner = Learner(settings, model_path, redis_url, run_dir, [])
    try:
        out.update(learner.run(2)["tracking"])
    finally:
        learner.close()


@pytest.mark.integration
def test_a_learner_run_sends_each_steps_metrics_line_to_tensorboard(
    redis_server, redis_client, tiny_model_path, tmp_path
):
    """Two real learner steps (DeepSpeed-CPU on the tiny model, groups from a real Redis stream): each
    numeric field of each metrics.jsonl line is TensorBoard's scalar at that step, and each step's
    rollout table holds rollouts of that step's groups."""
    import multiprocessing

    from broker.embedded import free_port
    from broker.streams import Producer, ensure_groups

    run_id = "t" + uuid.uuid4().hex[:8]
    config = load_config(
        "configs/demo_cpu_hf.yaml",
        [f"run.run_id={run_id}", f"run.output_dir={tmp_path}", "broker.max_groups_in_flight=64",
         "checkpoint.every=0", "logging.trackers=[tensorboard]", "logging.rollout_table_every=1"],
    )  # fmt: skip
    ensure_groups(redis_client, run_id)
    train = Producer(redis_client, run_id, "train", max_in_flight=None, maxlen=None)
    step_groups = [[scored(f"{v[0]}{s}{i}", v, 2 * (v == "guided"), [f"s{s} {v} {i} a", f"s{s} {v} {i} b"],
                           [1.0, 0.0]) for v in ("unguided", "guided") for i in range(2)] for s in (1, 2)]  # fmt: skip
    for group in (g for groups in step_groups for g in groups):
        train.put(group.model_copy(update={"group": group.group.model_copy(update={"run_id": run_id})}))
    run_dir = tmp_path / run_id
    context = multiprocessing.get_context("spawn")
    tracking = context.Manager().dict()
    args = (config.for_learner(), tiny_model_path, redis_server.url, str(run_dir), free_port(), tracking)
    child = context.Process(target=_run_learner, args=args)
    child.start()
    try:
        child.join(timeout=300)
        assert child.exitcode == 0
    finally:
        child.kill()
    assert dict(tracking) == {
        "trackers": ["tensorboard"],
        "failed_to_start": {},
        "errors": {},
        "error_count": 0,
    }
    lines = [json.loads(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    numeric = {k for line in lines for k, v in line.items() if type(v) in (int, float)} - {"step", "time"}
    assert {"loss", "entropy", "clip_frac_low", "reward_mean_guided", "policy_lag_mean", "step_s"} <= numeric
    assert set(scalars) == numeric
    for key in numeric:
        expected = [(line["step"], pytest.approx(float(line[key]), rel=1e-6)) for line in lines]
        assert scalars[key] == expected, key
    tables = tensorboard_events(run_dir / "tensorboard").Tensors("rollouts/text_summary")
    assert [t.step for t in tables] == [1, 2]
    for table, step in zip(tables, (1, 2), strict=True):
        body = table.tensor_proto.string_val[0].decode().splitlines()[2:]
        assert len(body) == 8 and all(
            f"| s{step} " in row for row in body
        )  # 4 groups x 2 rollouts, all of the step

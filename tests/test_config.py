import json
import subprocess
import sys
from pathlib import Path

import pytest

from pope.config import ConfigError, PopeConfig, load_config, parse_override

pytestmark = pytest.mark.unit
CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo_cpu.yaml", "paper_qwen3_4b_gpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, PopeConfig)


def test_paper_preset_matches_the_paper():
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "paper_qwen3_4b_gpu.yaml")
    assert "Qwen3-4B-Instruct-2507" in config.model.path
    assert config.actors.num_rollouts == 8
    assert config.learner.lr == pytest.approx(1e-6)
    assert config.data.guided_fraction == 0.5
    assert config.actors.max_new_tokens >= 16384


def test_override_sets_nested_value():
    config = load_config(None, ["learner.lr=0.5", "actors.engine.type=hf", "run.run_id=abc"])
    assert config.learner.lr == 0.5
    assert config.actors.engine.type == "hf"
    assert config.run.run_id == "abc"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"learner\.bogus: unknown key"):
        load_config(None, ["learner.bogus=1"])


def test_bad_value_is_named_with_reason():
    with pytest.raises(ConfigError, match=r"learner\.lr: Input should be greater than 0"):
        load_config(None, ["learner.lr=-1"])


def test_cross_field_check_names_both_fields():
    with pytest.raises(ConfigError, match=r"max_groups_in_flight.*groups_per_step"):
        load_config(None, ["broker.max_groups_in_flight=2", "learner.groups_per_step=4"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("actors:\n  num_actor: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "actors.num_actor: unknown key" in str(info.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("learner.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["learner.lr=1", "learner.lr.x=2"])


def test_run_id_generated_and_valid():
    config = PopeConfig().with_run_id()
    assert config.run.run_id and len(config.run.run_id) <= 48
    with pytest.raises(ConfigError, match="run.run_id"):
        load_config(None, ["run.run_id=has space"])


def test_schema_cli_prints_json_schema():
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "config", "--schema"],
        capture_output=True,
        text=True,
        check=True,
    )
    schema = json.loads(out.stdout)
    assert "learner" in schema["properties"]
    learner = schema["$defs"]["LearnerConfig"]["properties"]
    assert all("description" in field for field in learner.values())


def test_config_package_imports_no_heavy_library():
    code = "import sys, pope.config, broker.schemas; print(sorted(m for m in ('torch','ray','vllm','deepspeed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_that_bias_the_method_are_refused():
    from pope.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="actors.top_p"):
        load_config(None, ["actors.top_p=0.8"])
    with pytest.raises(ConfigError, match="k1"):
        load_config(None, ["learner.kl_coef=0.1", "learner.kl_estimator=k1"])
    with pytest.raises(ConfigError, match="pair_variants"):
        load_config(None, ["data.pair_variants=true", "data.guided_fraction=0.25"])
    load_config(None, ["learner.kl_coef=0.1", "learner.kl_estimator=k3", "data.pair_variants=true"])


@pytest.mark.parametrize(
    "override, named, reason",
    [
        ("broker.socket_timeout_s=.inf", "broker.socket_timeout_s", "finite"),
        ("learner.data_timeout_s=nan", "learner.data_timeout_s", "finite"),
        ("preprocess.verify_timeout_s=0", "preprocess.verify_timeout_s", "greater than 0"),
        ("preprocess.claim_idle_s=0.5", "preprocess.claim_idle_s", "greater than or equal to 1"),
        ("learner.steps=true", "steps", "a number, not true"),
        ("actors.num_rollouts=false", "num_rollouts", "a number, not false"),
        ("broker.redis_url=http://h:6379", "broker.redis_url", "redis://"),
    ],
)
def test_values_that_cannot_work_are_refused_naming_the_key(override, named, reason):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert named in str(caught.value) and reason in str(caught.value), str(caught.value)


def test_booleans_stay_booleans_and_integral_floats_stay_accepted():
    config = load_config(None, ["broker.persistence=false", "learner.steps=3", "preprocess.claim_idle_s=1"])
    assert config.broker.persistence is False and config.learner.steps == 3


def test_an_emergency_cap_below_what_can_be_in_flight_is_refused():
    """emergency_maxlen deletes the oldest entries; below twice the in-flight bound it would delete
    entries no one processed yet (issue J7)."""
    over = ["broker.max_groups_in_flight=600", "actors.num_actors=2", "preprocess.num_workers=1"]
    with pytest.raises(
        ConfigError, match=r"emergency_maxlen \(1000\) must be at least twice .*600 \+ 3 producers"
    ):
        load_config(None, [*over, "broker.emergency_maxlen=1000"])
    assert load_config(None, [*over, "broker.emergency_maxlen=1206"]).broker.emergency_maxlen == 1206
    with pytest.raises(ConfigError, match="4 producers"):  # autoscale's maxima count
        load_config(
            None,
            [
                "broker.max_groups_in_flight=600",
                "broker.emergency_maxlen=1000",
                "autoscale.enabled=true",
                "autoscale.max_actors=3",
                "autoscale.max_workers=1",
            ],
        )


@pytest.mark.unit
def test_each_component_gets_its_sections_and_the_values_it_shares():
    config = load_config(
        None, ["learner.groups_per_step=3", "metrics.progress_interval_s=2.5", "actors.num_rollouts=4"]
    )
    actors, workers, learner = config.for_actors(), config.for_preprocess(), config.for_learner()
    assert set(type(actors).model_fields) == {
        "run",
        "model",
        "data",
        "actors",
        "broker",
        "groups_per_step",
        "progress_interval_s",
        "weight_transfer",
    }
    assert set(type(workers).model_fields) == {"run", "broker", "preprocess", "progress_interval_s"}
    assert set(type(learner).model_fields) == {
        "run",
        "model",
        "data",
        "broker",
        "learner",
        "checkpoint",
        "num_rollouts",
        "progress_interval_s",
        "weight_transfer",
        "logging",
    }
    assert (actors.groups_per_step, actors.progress_interval_s, actors.actors) == (3, 2.5, config.actors)
    assert (workers.progress_interval_s, workers.preprocess) == (2.5, config.preprocess)
    assert (learner.num_rollouts, learner.progress_interval_s, learner.learner) == (4, 2.5, config.learner)


@pytest.mark.unit
def test_generation_auto_is_continuous_on_vllm_and_per_call_on_hf_and_continuous_needs_vllm():
    assert load_config("configs/demo_cpu.yaml", []).actors.continuous
    assert not load_config("configs/demo_cpu_hf.yaml", []).actors.continuous
    assert not load_config("configs/demo_cpu.yaml", ["actors.generation=per_call"]).actors.continuous
    with pytest.raises(ConfigError, match="actors.generation=continuous needs actors.engine.type=vllm"):
        load_config("configs/demo_cpu_hf.yaml", ["actors.generation=continuous"])


@pytest.mark.parametrize(
    ("choice", "engine", "learner_gpus", "actor_gpus", "actors", "expected"),
    [
        ("auto", "vllm", 0, 0, 2, "gloo"),  # CPU
        ("auto", "vllm", 1, 0, 2, "gloo"),  # actors on CPU
        ("auto", "vllm", 1, 1, 2, "nccl"),  # GPU to GPU
        ("auto", "hf", 1, 1, 2, "gloo"),  # the HF engine receives over gloo only
        ("auto", "vllm", 0.5, 0.5, 1, "nccl"),  # never ipc unasked
        ("ipc", "vllm", 0.5, 0.5, 1, "ipc"),
        ("nccl", "vllm", 1, 1, 4, "nccl"),
        ("gloo", "vllm", 1, 1, 4, "gloo"),
    ],
)
def test_the_weight_transfer_backend_follows_the_devices(
    choice, engine, learner_gpus, actor_gpus, actors, expected
):
    from pope.config import select_weight_transfer

    assert select_weight_transfer(choice, engine, learner_gpus, actor_gpus, actors) == expected


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["learner.weight_transfer=nccl"], "needs GPUs on both ends"),
        (
            [
                "learner.weight_transfer=nccl",
                "learner.num_gpus=1",
                "actors.num_gpus=1",
                "actors.engine.type=hf",
            ],
            "needs actors.engine.type=vllm",
        ),
        (
            ["learner.weight_transfer=ipc", "learner.num_gpus=1", "actors.num_gpus=1", "actors.num_actors=1"],
            "sharing the learner's GPU",
        ),
        (
            ["learner.weight_transfer=ipc", "learner.num_gpus=0.5", "actors.num_gpus=0.5"],
            "sharing the learner's GPU",
        ),
    ],
)
def test_a_weight_transfer_that_does_not_fit_the_devices_is_refused(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def test_the_resolved_backend_reaches_the_actors_and_the_learner():
    config = load_config(None, ["learner.num_gpus=1", "actors.num_gpus=1"])
    assert config.for_actors().weight_transfer == config.for_learner().weight_transfer == "nccl"
    assert load_config(None).for_actors().weight_transfer == "gloo"


def test_a_stale_window_a_live_actors_refresh_could_miss_is_refused():
    with pytest.raises(ConfigError, match=r"generating_stale_s"):
        load_config(None, ["broker.generating_stale_s=2.5", "metrics.progress_interval_s=1.0"])
    assert load_config(None, ["broker.generating_stale_s=3"]).broker.generating_stale_s == 3.0

"""The command line's bad inputs: one line on stderr naming what is wrong (exit 2), no traceback;
and the Redis password never reaches config.yaml, a message or `pope config`."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from orchestrator.cli import main
from pope.config import ConfigError, dump_config, is_redacted, load_config, redact_url

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-Pa55"
URL = f"redis://alice:{SECRET}@db.example:6380/2"


def _one_line_error(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def test_redact_url_hides_only_the_password():
    assert redact_url(URL) == "redis://alice:***@db.example:6380/2"
    assert redact_url("redis://:pw@127.0.0.1:7/0") == "redis://:***@127.0.0.1:7/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"  # nothing to hide
    assert (
        redact_url(f"a {URL} and rediss://:x@h")
        == "a redis://alice:***@db.example:6380/2 and rediss://:***@h"
    )
    assert is_redacted(redact_url(URL)) and not is_redacted(URL) and not is_redacted(None)


def test_the_password_is_not_in_config_yaml_nor_in_errors(capsys):
    config = load_config(None, [f"broker.redis_url={URL}"])
    assert config.broker.redis_url == URL  # the run itself connects with it
    dumped = dump_config(config)
    assert SECRET not in dumped and "redis://alice:***@db.example:6380/2" in dumped
    with pytest.raises(ConfigError) as caught:  # an error elsewhere echoes the overrides: redacted
        load_config(None, [f"broker.redis_url={URL}", "learner.steps=-1"])
    assert SECRET not in str(caught.value) and "learner.steps" in str(caught.value)
    assert main(["config", f"broker.redis_url={URL}"]) == 0
    assert SECRET not in capsys.readouterr().out


@pytest.mark.parametrize("url", ["http://:pw@host:6379", "localhost:6379", "tcp://host"])
def test_a_non_redis_url_is_refused_naming_the_key(url):
    with pytest.raises(ConfigError, match=r"broker\.redis_url: .*redis://, rediss:// or unix://") as caught:
        load_config(None, [f"broker.redis_url={url}"])
    assert "pw" not in str(caught.value).replace("pope", "")


def test_scale_reports_a_missing_or_corrupt_connection_and_a_bad_size(tmp_path, capsys):
    _one_line_error(capsys, ["scale", "--run", "r1", "--output-dir", str(tmp_path), "actors=2"],
                    "connection.json missing")  # fmt: skip
    run = tmp_path / "r1"
    run.mkdir()
    (run / "connection.json").write_text('{"run_id": "r1", "redis_u')
    _one_line_error(capsys, ["scale", "--run", "r1", "--output-dir", str(tmp_path), "actors=2"],
                    "connection.json is corrupt")  # fmt: skip
    (run / "connection.json").write_text('["r1"]')
    _one_line_error(capsys, ["scale", "--run", "r1", "--output-dir", str(tmp_path), "actors=2"],
                    "connection.json is corrupt")  # fmt: skip
    _one_line_error(capsys, ["scale", "--run", "r1", "--output-dir", str(tmp_path), "actors=0"],
                    "'actors=0'", "N >= 1")  # fmt: skip


def test_scale_names_an_unreachable_redis_without_its_password(tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = tmp_path / "r2"
    run.mkdir()
    (run / "connection.json").write_text(
        json.dumps({"run_id": "r2", "redis_url": f"redis://:{SECRET}@127.0.0.1:{port}/0"})
    )
    err = _one_line_error(capsys, ["scale", "--run", "r2", "--output-dir", str(tmp_path), "actors=2"],
                          f"127.0.0.1:{port}", "did not answer")  # fmt: skip
    assert SECRET not in err


def test_train_and_validate_name_a_bad_dataset_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?"}\n{"answer": "2"}\n')
    _one_line_error(capsys, ["train", f"data.source={bad}", f"run.output_dir={tmp_path}", "metrics.port=0",
                             "broker.persistence=false"], "bad.jsonl", "2 of 2 rows bad")  # fmt: skip
    _one_line_error(capsys, ["train", f"data.source={tmp_path / 'none.csv'}", f"run.output_dir={tmp_path}"],
                    "none.csv")  # fmt: skip


def test_embedded_redis_files_are_private(tmp_path):
    from broker.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "redis", persistence=True) as server:
        import redis

        redis.Redis.from_url(server.url).set("k", "v")
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        assert mode(tmp_path / "redis" / "redis.conf") == 0o600
        written = [p for p in (tmp_path / "redis").rglob("*") if p.is_file() and p.name != "redis.conf"]
        assert written and all(mode(p) == 0o600 for p in written), [(p.name, oct(mode(p))) for p in written]


def test_a_run_dir_in_use_is_refused_naming_the_launcher_and_freed_when_it_dies(tmp_path, capsys):
    """`pope train --resume` while the run's launcher lives would start a second Redis on its AOF
    and a second learner on its checkpoints: refused in one line naming the holder's pid. A
    SIGKILLed holder frees the directory (the lock is the kernel's)."""
    import signal
    import subprocess
    import sys

    run_dir = tmp_path / "r1"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step2")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib; from orchestrator.launcher import _RunDirLock; "
         f"lock = _RunDirLock(pathlib.Path({str(run_dir)!r})).__enter__(); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        config = load_config("configs/demo_cpu_hf.yaml", ["run.run_id=r1", f"run.output_dir={tmp_path}"])
        (run_dir / "config.yaml").write_text(dump_config(config))
        argv = ["train", "--resume", str(run_dir), "metrics.enabled=false"]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            f"pope train: {run_dir} is in use by another pope train (pid {holder.pid}): wait for it to end, "
            "or stop it, before resuming this run"
        )
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        from orchestrator.launcher import _RunDirLock

        with _RunDirLock(run_dir):  # free again
            assert (run_dir / "launcher.lock").read_text() == str(os.getpid())
    finally:
        holder.kill()

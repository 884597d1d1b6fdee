"""Checkpoints on the file system: what ``checkpoint.keep_last`` deletes and what it must never
delete (the one a resume loads, and one being written); Hugging Face checkpoints written atomically
(a writer killed halfway leaves no checkpoint); what ``pope export`` refuses to read; which run
``pope train --resume auto`` picks. The real learner's checkpoints: tests/test_checkpoints_learner.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from learner.export import MODEL_STATES, ExportError, checkpoint_tag
from learner.policy import HF_PREFIX, checkpoint_steps, rotate_checkpoints, write_dir_atomically
from orchestrator.cli import main
from orchestrator.runs import describe, find_run_to_resume
from pope.config import MOVED_LEARNER_KEYS, ConfigError, dump_config, load_config

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("keep", "left"), [(2, ["step4", "step6", "step10"]), (1, ["step6", "step10"]),
                                            (9, ["step2", "step4", "step6", "step10"])])  # fmt: skip
def test_rotation_keeps_the_newest_and_never_the_loaded_or_the_half_written(tmp_path, keep, left):
    """Tags step2, step4, step6 complete (``latest`` names step6), step10 being written: the newest
    ``keep`` complete ones stay (by step number, not name: step10 sorts before step2), step10 too."""
    for tag in ("step2", "step4", "step6", "step10"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (tmp_path / "latest").write_text("step6")
    deleted = rotate_checkpoints(str(tmp_path), "step6", keep)
    remaining = sorted((p.name for p in tmp_path.iterdir() if p.is_dir()), key=lambda n: int(n[4:]))
    assert remaining == left
    assert sorted(deleted, key=lambda n: int(n[4:])) == [
        t for t in ("step2", "step4", "step6") if t not in left
    ]
    assert (tmp_path / "latest").read_text() == "step6"


# -- the checkpoint section ------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new"), sorted(MOVED_LEARNER_KEYS.items()))
def test_a_learner_checkpoint_key_of_before_fails_naming_its_new_key(old, new):
    with pytest.raises(ConfigError, match=rf"learner\.{old} is now {re.escape(new)}"):
        load_config(None, [f"learner.{old}=1"])
    section, key = new.split(".")
    assert key in type(getattr(load_config(None, []), section)).model_fields


# -- Hugging Face checkpoints are written atomically -------------------------------------------------
KILLED_WRITER = """
import os, signal, sys
from learner.policy import write_dir_atomically

def write(folder):
    (folder / "config.json").write_text("{}")
    os.kill(os.getpid(), signal.SIGKILL)  # dies with the folder half-written

write_dir_atomically(sys.argv[1], write)
"""


def test_a_hf_checkpoint_killed_while_written_is_never_a_checkpoint_and_the_next_write_removes_it(tmp_path):
    hf = tmp_path / "hf"
    for step in (2, 4):
        write_dir_atomically(hf / f"step_{step}", lambda f: (f / "model.safetensors").write_bytes(b"w"))
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(hf / "step_6")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (hf / "step_6").exists()
    [leftover] = [p.name for p in hf.iterdir() if p.name.startswith(".")]
    assert leftover.startswith(".step_6.tmp-") and (hf / leftover / "config.json").is_file()
    assert checkpoint_steps(hf, HF_PREFIX) == [(2, "step_2"), (4, "step_4")]  # the leftover is no checkpoint
    # rotation never counts it; the next write (step 8) removes it
    assert rotate_checkpoints(str(hf), "step_4", 1, prefix=HF_PREFIX) == ["step_2"]
    write_dir_atomically(hf / "step_8", lambda f: (f / "model.safetensors").write_bytes(b"8"), ".step_*")
    assert sorted(p.name for p in hf.iterdir()) == ["step_4", "step_8"]
    # a rewrite of a step (a resumed learner redoing it) replaces the folder whole
    write_dir_atomically(hf / "step_8", lambda f: (f / "other").write_bytes(b"9"), ".step_*")
    assert [p.name for p in (hf / "step_8").iterdir()] == ["other"]


# -- pope export refuses what it must not read ------------------------------------------------------
def _fake_checkpoints(folder: Path, tags: list[str], latest: str | None) -> None:
    for tag in tags:
        (folder / tag).mkdir(parents=True)
        (folder / tag / MODEL_STATES).write_bytes(b"x")
    if latest:
        (folder / "latest").write_text(latest)


def test_export_reads_only_a_published_checkpoint(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoints(run / "checkpoints", ["step2", "step4", "step6"], "step4")  # step6: being written
    assert checkpoint_tag(run) == (run / "checkpoints", "step4")
    assert checkpoint_tag(run / "checkpoints", 2) == (run / "checkpoints", "step2")
    with pytest.raises(
        ExportError, match=r"step6: newer than the published checkpoint \(step4\); it may be half"
    ):
        checkpoint_tag(run, 6)
    with pytest.raises(ExportError, match=r"no checkpoint of step 3 \(kept: step2, step4\)"):
        checkpoint_tag(run, 3)
    bare = tmp_path / "bare"
    _fake_checkpoints(bare / "checkpoints", ["step2"], None)  # killed before its first publish
    with pytest.raises(ExportError, match=r"no published resumable checkpoint"):
        checkpoint_tag(bare)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2  # never overwrites
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


# -- pope train --resume auto -----------------------------------------------------------------------
def _fake_run(output_dir: Path, run_id: str, overrides: list[str], tag: str | None, published_at: float = 0):
    run_dir = output_dir / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(load_config(None, [f"run.run_id={run_id}", *overrides])))
    if tag is not None:
        _fake_checkpoints(run_dir / "checkpoints", [tag], tag)
        os.utime(run_dir / "checkpoints" / "latest", (published_at, published_at))
    return run_dir


def test_resume_auto_picks_the_matching_run_that_checkpointed_last(tmp_path):
    """Four runs: two match (b published after a; b trained fewer steps, saved and served metrics
    otherwise, which a resume may change), c published last but with another learning rate, d
    matches but never published a checkpoint (only a tag being written)."""
    now = 1_800_000_000.0
    _fake_run(tmp_path, "a", [], "step4", now - 300)
    _fake_run(tmp_path, "b", ["learner.steps=10", "checkpoint.every=5", "metrics.port=0",
                              "learner.step_timeout_s=5"], "step10", now - 200)  # fmt: skip
    _fake_run(tmp_path, "c", ["learner.lr=0.002"], "step8", now - 100)
    _fake_run(tmp_path, "d", [], None)
    _fake_checkpoints(tmp_path / "d" / "checkpoints", ["step2"], None)
    wanted = load_config(None, [f"run.output_dir={tmp_path}", "learner.steps=20"])
    picked = find_run_to_resume(wanted)
    assert (picked.run_dir, picked.tag, picked.published_at) == (tmp_path / "b", "step10", now - 200)
    assert describe(picked).startswith(
        f"--resume auto: continuing {tmp_path / 'b'} from its checkpoint step10"
    )
    # with a's checkpoint the newer one, a wins
    os.utime(tmp_path / "a" / "checkpoints" / "latest", (now, now))
    assert find_run_to_resume(wanted).run_dir == tmp_path / "a"
    # run.run_id set: only that run is looked at
    only_c = load_config(None, [f"run.output_dir={tmp_path}", "run.run_id=c", "learner.lr=0.002"])
    assert find_run_to_resume(only_c).run_dir == tmp_path / "c"


def test_resume_auto_refuses_naming_each_run_and_why(tmp_path, capsys):
    _fake_run(tmp_path, "a", [], "step4", 1.0)
    _fake_run(tmp_path, "c", ["learner.lr=0.002"], "step8", 2.0)
    _fake_run(tmp_path, "d", ["run.seed=3", "learner.lr=0.002"], None)
    old = tmp_path / "e"
    old.mkdir()
    (old / "config.yaml").write_text("learner:\n  checkpoint_every: 5\n")
    code = main(["train", "--resume", "auto", f"run.output_dir={tmp_path}", "run.seed=3", "learner.lr=0.002"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"none of the 4 runs under {tmp_path} matches this config and has a resumable checkpoint" in err
    assert "  a: differs in learner.lr (run 0.001, now 0.002), run.seed (run 0, now 3)\n" in err
    assert "  c: differs in run.seed (run 0, now 3)\n" in err
    assert "  d: no published resumable checkpoint (checkpoints/latest)\n" in err
    assert (
        "  e: its config.yaml does not load (" in err
        and "learner.checkpoint_every is now checkpoint.every" in err
    )
    assert main(["train", "--resume", "auto", f"run.output_dir={tmp_path / 'none'}"]) == 2
    assert f"no run under {tmp_path / 'none'}" in capsys.readouterr().err

"""Checkpoint rotation on the file system: what ``learner.keep_checkpoints`` deletes and what it must
never delete (the one a resume loads, and one being written)."""

from __future__ import annotations

import pytest

from learner.policy import rotate_checkpoints

pytestmark = pytest.mark.unit


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

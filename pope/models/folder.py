"""A model folder as the launcher hands it to components: its path, and for built-in models where
to fetch its files.

The roof resolves ``model.path`` once, on the driver (orchestrator/models.py). A component on
another node may not see that path: a built-in model was built under the driver's working
directory (``ray job submit`` unpacks a copy per node). So the launcher stages a built-in model's
files in the run's Redis when they are small (the tiny and testbed models are a few MB;
``broker.streams.stage_files``) and a component whose node lacks the folder fetches them once into
a node-local folder. A larger built-in model (SmolLM2-135M, 517 MiB) is not staged: on a cluster
its folder must be on storage every node sees, like a user's. The files never travel in Ray task arguments: Ray does not keep large
arguments of an actor's creation task for its restarts. A user's folder is never copied: on a
cluster it must be on storage every node sees, and a node without it fails naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_STAGED_BYTES = 256 << 20  # larger built-in models go on shared storage


@dataclass(frozen=True)
class ModelFolder:
    path: str
    files_key: str | None = None  # where its files are staged (a Redis key); None: not staged

    @staticmethod
    def size(path: str | Path) -> int:
        """Bytes of all files under the folder."""
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

    @staticmethod
    def read_files(path: str | Path) -> dict[str, bytes]:
        folder = Path(path)
        size = ModelFolder.size(folder)
        if size > MAX_STAGED_BYTES:
            raise ValueError(
                f"model folder {folder} holds {size / 2**20:.0f} MiB, too much to stage for other nodes: "
                "put it on storage every node sees and set model.path to it"
            )
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        if "config.json" not in files:
            raise FileNotFoundError(
                f"model folder {folder} holds no config.json ({len(files)} files): nothing to stage"
            )
        return files

    @staticmethod
    def digest(files: dict[str, bytes]) -> str:
        h = hashlib.sha256()
        for name, data in sorted(files.items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:12]

    def local(self, cache_dir: str | Path, fetch: Callable[[str], dict[str, bytes]] | None = None) -> str:
        """A path of this folder on this node: the original where it exists, else the staged files
        (``fetch(files_key)``) written, atomically and once, under ``cache_dir`` when absolute, else
        under the node's temp folder (a relative cache would sit inside the job's working directory,
        which Ray may unpack again for another worker of the node)."""
        if (Path(self.path) / "config.json").is_file():
            return self.path
        if self.files_key is None or fetch is None:
            raise FileNotFoundError(
                f"model folder {self.path} is not on this node; on a cluster, model.path must be on storage "
                "every node sees"
            )
        root = (
            Path(cache_dir) if Path(cache_dir).is_absolute() else Path(tempfile.gettempdir()) / "pope-models"
        )
        target = root / "shipped" / f"{Path(self.path).name}-{self.files_key.rsplit(':', 1)[-1]}"
        if not (target / "config.json").is_file():
            files = fetch(self.files_key)
            if not files:
                raise FileNotFoundError(
                    f"model folder {self.path}: its staged files ({self.files_key}) are gone"
                )
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            try:
                os.rename(tmp, target)
            except OSError:  # another process of this node wrote it first
                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)


def local_folder(model: str | ModelFolder, cache_dir: str | Path, fetch=None) -> str:
    return model.local(cache_dir, fetch) if isinstance(model, ModelFolder) else str(model)

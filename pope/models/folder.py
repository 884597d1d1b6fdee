"""A model folder as the launcher hands it to components: its path, and for built-in models its files.

The roof resolves ``model.path`` once, on the driver (orchestrator/models.py). A component on
another node may not see that path: a built-in model was built under the driver's working
directory (``ray job submit`` unpacks a copy per node). So the launcher ships a built-in model's
files with it (they are small: the tiny and testbed models are a few MB) and a component whose
node lacks the folder writes them once into its own cache. A user's folder is never copied: on a
cluster it must be on a path every node sees (shared storage), and a node without it fails naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAX_SHIPPED_BYTES = 2 << 30  # a model this large goes on shared storage, not through Ray's object store


@dataclass(frozen=True)
class ModelFolder:
    path: str
    files: dict[str, bytes] | None = None  # relative path -> contents; None: not shipped

    @classmethod
    def of(cls, path: str | Path, ship: bool) -> ModelFolder:
        folder = Path(path)
        if not ship:
            return cls(str(folder))
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        size = sum(len(b) for b in files.values())
        if size > MAX_SHIPPED_BYTES:
            raise ValueError(f"model folder {folder} holds {size / 2**30:.1f} GiB: too large to ship")
        return cls(str(folder), files)

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, data in sorted((self.files or {}).items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:12]

    def local(self, cache_dir: str | Path) -> str:
        """A path of this folder on this node: the original where it exists, else the shipped files
        written (atomically, once) under ``cache_dir`` when absolute, else under the node's temp folder."""
        if (Path(self.path) / "config.json").is_file():
            return self.path
        if self.files is None:
            raise FileNotFoundError(
                f"model folder {self.path} is not on this node; on a cluster, model.path must be on storage "
                "every node sees"
            )
        # a relative cache (the default .cache/pope) would sit inside the job's working directory,
        # which Ray may unpack again for another worker of the node: shipped files go to a node-local
        # folder outside it
        root = Path(cache_dir) if Path(cache_dir).is_absolute() else Path(tempfile.gettempdir()) / "pope-models"
        target = root / "shipped" / f"{Path(self.path).name}-{self.digest()}"
        if not (target / "config.json").is_file():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, data in self.files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            try:
                os.rename(tmp, target)
            except OSError:  # another process of this node wrote it first
                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)


def local_folder(model: str | ModelFolder, cache_dir: str | Path) -> str:
    return model.local(cache_dir) if isinstance(model, ModelFolder) else str(model)

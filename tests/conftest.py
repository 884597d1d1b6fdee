"""Shared fixtures: a real redis-server, the tiny model, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def become_subreaper() -> None:
    """Orphaned descendants (daemons of `ray start`, engine processes) re-parent to this process, so
    tests can find, check and end exactly the processes they caused (Linux prctl)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from broker.embedded import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server):
    from broker.streams import connect

    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from orchestrator.models import resolve_model_path

    return str(resolve_model_path("builtin:tiny-qwen2", ROOT / ".cache" / "pope", seed=0))

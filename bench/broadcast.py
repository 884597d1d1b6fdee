"""Weight broadcast: rank 0 (this process, the learner's role) sends a set of tensors to one
receiver (a spawned process, an actor's role) over a gloo group from ``pope.weight_sync.make_group``.

Per set of tensors, three ways, alternated rep by rep on the same group:
- pope: ``broadcast_tensors`` (bucketed: the sender packs the tensors into its bucket buffer, one
  collective per bucket, the receiver takes views of its own; both ends keep their buffers between
  reps, as the learner and the engines do);
- raw: ``group.broadcast(flat, 0).wait()`` of one preallocated flat tensor of the same bytes;
- raw_fresh: the same, but the sender packs a new flat tensor (``torch.cat``) and the receiver
  allocates a new one each rep: what pope does per bucket, without its code around it. So
  pope - raw_fresh is pope's own overhead and raw_fresh - raw the cost of fresh buffers.

A rep ends when rank 0 receives a 4-byte broadcast from the receiver sent after it finished, so
both ways are timed from send start to "the receiver has everything" (plus the same small round
trip). The sets: the tiny model's named_parameters, and fp32 sets of 4 MiB tensors (1024 x 1024,
a typical weight matrix) totalling 16, 64 and 256 MiB. Times are medians over the reps.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import torch

TIMEOUT_S = 300.0
TENSOR_SHAPE = (1024, 1024)  # 4 MiB in fp32


WAYS = ("pope", "raw", "raw_fresh")


def _one_rep(group, metas, tensors, flat, rank: int, buffers: dict) -> dict[str, float]:
    """One broadcast each way, each followed by the receiver's ack; seconds per way."""
    from pope.weight_sync import broadcast_tensors

    ack = torch.zeros(1)
    times = {}
    for way in WAYS:
        t0 = time.perf_counter()
        if way == "pope":
            for _name, _view in broadcast_tensors(
                group, metas, tensors if rank == 0 else None, TIMEOUT_S, buffers=buffers
            ):
                pass
        elif way == "raw":
            group.broadcast(flat, 0).wait()
        elif rank == 0:
            group.broadcast(torch.cat([t.reshape(-1) for t in tensors]), 0).wait()
        else:
            group.broadcast(torch.empty_like(flat), 0).wait()
        group.broadcast(ack, 1).wait()
        times[way] = time.perf_counter() - t0
    return times


def _receiver(port: int, conn) -> None:
    from pope.weight_sync import TensorMeta, make_group

    group, _store = make_group("127.0.0.1", port, 1, 2, TIMEOUT_S)
    while (request := conn.recv()) is not None:
        wire, reps = request
        metas = [TensorMeta(name, tuple(shape), dtype) for name, shape, dtype in wire]
        flat = torch.empty(sum(m.numel for m in metas), dtype=torch.float32)
        buffers: dict = {}  # pope's bucket buffers, reused across reps as the learner and actors do
        for _ in range(reps + 1):  # +1: the warm-up rep
            _one_rep(group, metas, None, flat, 1, buffers)
        conn.send("done")


def tensor_sets(quick: bool) -> dict[str, list[tuple[str, torch.Tensor]]]:
    from transformers import AutoModelForCausalLM

    from bench.common import tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path(), dtype=torch.float32)
    sets = {"tiny_model": [(n, p.detach().clone()) for n, p in model.named_parameters()]}
    tensor_mib = 4 * TENSOR_SHAPE[0] * TENSOR_SHAPE[1] / 2**20
    for mib in (16, 64) if quick else (16, 64, 256):
        count = int(mib / tensor_mib)
        sets[f"fp32_{mib}mib"] = [(f"w{i}", torch.randn(TENSOR_SHAPE)) for i in range(count)]
    return sets


def run(quick: bool = False) -> dict:
    from bench.common import median
    from broker.embedded import free_port
    from pope.weight_sync import make_group, meta_of

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    port = free_port()
    proc = ctx.Process(target=_receiver, args=(port, child), daemon=True)
    proc.start()
    group, _store = make_group("127.0.0.1", port, 0, 2, TIMEOUT_S)
    results: dict = {"backend": "gloo", "torch_threads": torch.get_num_threads()}
    largest = None
    try:
        for name, named in tensor_sets(quick).items():
            metas = meta_of(named)
            tensors = [t for _, t in named]
            nbytes = sum(t.numel() * t.element_size() for t in tensors)
            reps = 3 if quick else (20 if nbytes < 16 << 20 else 10)
            flat = torch.cat([t.reshape(-1) for t in tensors])
            parent.send(([(m.name, list(m.shape), m.dtype) for m in metas], reps))
            buffers: dict = {}
            samples = [_one_rep(group, metas, tensors, flat, 0, buffers) for _ in range(reps + 1)][1:]
            assert parent.recv() == "done"
            mib = nbytes / 2**20
            entry = {"mib": mib, "num_tensors": len(tensors), "reps": reps}
            for way in WAYS:
                seconds = median([sample[way] for sample in samples])
                entry[f"{way}_s"], entry[f"{way}_mib_per_s"] = seconds, mib / seconds
            entry["pope_vs_raw"] = entry["pope_s"] / entry["raw_s"]
            results[name] = entry
            if name != "tiny_model":
                largest = name
    finally:
        parent.send(None)
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    results["largest"] = largest
    results["broadcast_vs_raw"] = results[largest]["pope_vs_raw"]
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))

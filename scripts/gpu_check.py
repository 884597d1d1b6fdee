"""What one GPU can check with torch alone: no vLLM, no DeepSpeed, no network.

    python scripts/gpu_check.py                   # on CUDA; without CUDA every check is SKIP, exit 0
    python scripts/gpu_check.py --require-gpu     # the same, but no CUDA is a failure (exit 1)
    python scripts/gpu_check.py --device cpu      # the same checks on CPU (bf16 on CPU, shared memory)
    python scripts/gpu_check.py --json out.json   # the results as JSON too

Three checks, each printed as ``PASS|FAIL|SKIP name  seconds  detail``; the exit status is 1 when
any check FAILs (or, under --require-gpu, when there is no CUDA device).

    learner_step_bf16   the learner's step in bf16 as DeepSpeed's bf16 mode runs it: a bf16 model,
                        float32 master weights in AdamW. Forward, the project's GRPO loss
                        (learner/loss.py: token log-probs, clipped surrogate, token mean) on
                        synthetic group advantages, backward, optimizer step. PASS: loss and every
                        gradient finite, every weight moved, and the bf16 loss within
                        LOSS_TOLERANCE x mean|A| of a float32 reference step on the same weights
                        and batch, bf16 and float32 gradients in the same direction (cosine >=
                        GRAD_COSINE_MIN).
    bucket_packing      pope/weight_sync.py's ``broadcast_tensors`` on the device, over a loopback
                        group (the broadcast itself a no-op): the model's tensors, float32 and a
                        bf16 copy, packed into small buckets (several per dtype) and read back as
                        views; PASS: every tensor back bit for bit, twice with different values
                        through the same reused buffers. Times one pass, GB/s of tensor bytes.
    ipc_transfer        a tensor sent to a second process (torch.multiprocessing, spawn): on CUDA
                        its IPC handle, on CPU its shared memory. The receiver checks the float64
                        checksum equals the sender's, then doubles the tensor in place; PASS: both
                        checksums agree and the sender sees its own tensor doubled (the memory is
                        shared, not copied).

The model is the built-in tiny Qwen2's architecture (pope/models/tiny.py's ``TINY_SPEC``, freshly
initialised) when transformers is importable, else a small torch language model of the same
width. ``--corrupt NAME`` damages check NAME's data on purpose (its FAIL shows the check can fail).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHECKS = ("learner_step_bf16", "bucket_packing", "ipc_transfer")
LOSS_TOLERANCE = 0.01  # |loss_bf16 - loss_fp32| <= this x mean|A| (bf16 rounds each op by <= 2^-8 relative)
GRAD_COSINE_MIN = 0.99
BUCKET_BYTES = 64 << 10  # small, so the tiny model's tensors fill several buckets per dtype
IPC_NUMEL = 16 << 20  # 64 MiB of float32
IPC_TIMEOUT_S = 120.0


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status} {self.name}  {self.seconds:.3f}s  {self.detail}"


def verdict(name: str, seconds: float, problems: list[str], detail: str, numbers: dict) -> CheckResult:
    """PASS with ``detail`` when there are no problems, else FAIL naming each."""
    if problems:
        return CheckResult(name, "FAIL", seconds, "; ".join(problems), numbers)
    return CheckResult(name, "PASS", seconds, detail, numbers)


class _Vocab:
    """What ``new_qwen2`` reads of a tokenizer: its size and two special ids."""

    def __init__(self, size: int):
        self.size, self.eos_token_id, self.pad_token_id = size, 2, 0

    def __len__(self) -> int:
        return self.size


class _TorchLM(torch.nn.Module):
    """A small language model in plain torch (used when transformers is missing): embedding,
    residual MLP blocks, tied head, initialised as Qwen2 is; called like a Hugging Face model,
    returns ``.logits``."""

    def __init__(self, vocab: int, hidden: int, layers: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.LayerNorm(hidden),
                torch.nn.Linear(hidden, 2 * hidden),
                torch.nn.GELU(),
                torch.nn.Linear(2 * hidden, hidden),
            )
            for _ in range(layers)
        )
        self.norm = torch.nn.LayerNorm(hidden)
        for module in self.modules():  # Qwen2's initialisation (initializer_range 0.02)
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = h + block(h)
        return SimpleNamespace(logits=self.norm(h) @ self.embed.weight.T)


def build_model(seed: int) -> tuple[torch.nn.Module, str]:
    """A float32 model on CPU and its kind."""
    from pope.models.tiny import TINY_SPEC

    torch.manual_seed(seed)
    try:
        import transformers  # noqa: F401
    except ImportError:
        return _TorchLM(
            TINY_SPEC["vocab_size"], TINY_SPEC["hidden_size"], TINY_SPEC["num_hidden_layers"]
        ), "torch-lm"
    from pope.models.tiny import new_qwen2

    return new_qwen2(TINY_SPEC, _Vocab(TINY_SPEC["vocab_size"])), "tiny-qwen2"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


# -- learner step ----------------------------------------------------------------------------------
def synthetic_batch(
    vocab: int, seed: int, groups: int = 2, rollouts: int = 4, length: int = 32, prompt: int = 8
):
    """Token ids, attention, completion mask and per-token group advantages (A_i = r_i - mean of
    the group's rewards, r in {0, 1}), completions of varying length, all on CPU."""
    gen = torch.Generator().manual_seed(seed)
    rows = groups * rollouts
    ids = torch.randint(3, vocab, (rows, length), generator=gen)
    lengths = torch.randint(prompt + 4, length + 1, (rows,), generator=gen)
    position = torch.arange(length)
    attention = (position[None, :] < lengths[:, None]).long()
    # mask over targets (positions 1..T-1): completion tokens only
    mask = ((position[None, 1:] >= prompt) & (position[None, 1:] < lengths[:, None])).float()
    rewards = torch.tensor([0.0, 1.0] * (rows // 2))[torch.randperm(rows, generator=gen)].view(
        groups, rollouts
    )
    advantages = (rewards - rewards.mean(dim=1, keepdim=True)).view(rows, 1).expand(rows, length - 1)
    return ids, attention, mask, advantages.contiguous()


def grpo_loss(model, ids, attention, mask, advantages, logp_behaviour):
    """The project's loss on one batch, as learner/policy.py's micro-step computes it with the
    learner's defaults (behaviour ratios, eps_low = eps_high = 0.2, token_mean)."""
    from learner.loss import AGGREGATIONS, StepNorm, clipped_surrogate, token_logprobs

    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    logp = token_logprobs(logits, ids[:, 1:])
    terms = clipped_surrogate(logp, logp_behaviour, advantages, mask, eps_low=0.2, eps_high=0.2)
    norm = StepNorm(tokens=float(mask.sum()), sequences=float(mask.shape[0]), constant=float(mask.numel()))
    return AGGREGATIONS["token_mean"](terms.per_token, mask, norm), logp


def check_learner_step(device: str, seed: int = 0, corrupt: bool = False) -> CheckResult:
    from learner.loss import token_logprobs

    base, kind = build_model(seed)
    vocab = (
        base.get_input_embeddings().weight.shape[0]
        if hasattr(base, "get_input_embeddings")
        else base.embed.num_embeddings
    )
    ids, attention, mask, advantages = (t.to(device) for t in synthetic_batch(vocab, seed))

    reference = copy.deepcopy(base).to(device)
    with torch.no_grad():  # behaviour log-probs: the float32 policy's, perturbed so that some ratios clip
        logits = reference(input_ids=ids, attention_mask=attention).logits[:, :-1]
        noise = torch.randn(mask.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
        logp_behaviour = token_logprobs(logits, ids[:, 1:]) + 0.2 * noise
    loss_fp32, _ = grpo_loss(reference, ids, attention, mask, advantages, logp_behaviour)
    loss_fp32.backward()
    grads_fp32 = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])

    model = copy.deepcopy(base).to(device=device, dtype=torch.bfloat16)
    params = list(model.parameters())
    master = [p.detach().float().clone().requires_grad_(True) for p in params]
    optimizer = torch.optim.AdamW(master, lr=1e-3)
    _sync(device)
    t0 = time.perf_counter()
    loss, _ = grpo_loss(model, ids, attention, mask, advantages, logp_behaviour)
    loss.backward()
    for p, m in zip(params, master, strict=True):
        m.grad = p.grad.float()
    if corrupt:
        master[0].grad.view(-1)[0] = float("nan")
    grads_finite = all(bool(torch.isfinite(m.grad).all()) for m in master)
    before = [m.detach().clone() for m in master]
    optimizer.step()
    with torch.no_grad():
        for p, m in zip(params, master, strict=True):
            p.copy_(m)
    _sync(device)
    seconds = time.perf_counter() - t0

    grads_bf16 = torch.cat([m.grad.reshape(-1) for m in master])
    cosine = float(torch.nn.functional.cosine_similarity(grads_bf16.double(), grads_fp32.double(), dim=0))
    # the float32 master weights must move; their bf16 copies may round back (a norm weight of 1.0
    # moves in steps of 2^-7, far above lr 1e-3), which is why DeepSpeed keeps the masters
    moved = sum(not torch.equal(b, m.detach()) for b, m in zip(before, master, strict=True))
    weights_finite = all(bool(torch.isfinite(p).all()) for p in params)
    mean_abs_adv = float((advantages.abs() * mask).sum() / mask.sum())
    tolerance = LOSS_TOLERANCE * mean_abs_adv
    loss, loss_fp32 = float(loss.detach()), float(loss_fp32.detach())
    diff = abs(loss - loss_fp32)
    problems = []
    if not math.isfinite(loss):
        problems.append("loss not finite")
    if not grads_finite or not weights_finite:
        problems.append("gradients or weights not finite")
    if diff > tolerance:
        problems.append(f"bf16 loss off by {diff:.2e} > {tolerance:.2e}")
    if not cosine >= GRAD_COSINE_MIN:
        problems.append(f"gradient cosine {cosine:.4f} < {GRAD_COSINE_MIN}")
    if moved != len(params):
        problems.append(f"{len(params) - moved} of {len(params)} master weights did not move")
    numbers = {
        "model": kind, "loss_bf16": loss, "loss_fp32": loss_fp32, "loss_abs_diff": diff,
        "loss_tolerance": tolerance, "grad_cosine": cosine, "weights_moved": moved, "weights": len(params),
        "tokens": int(mask.sum()),
    }  # fmt: skip
    detail = (
        f"{kind}: loss bf16 {loss:.5f} vs fp32 {loss_fp32:.5f} (|diff| {diff:.1e} <= "
        f"{tolerance:.1e}), grad cosine {cosine:.4f}, {moved}/{len(params)} master weights moved"
    )
    return verdict("learner_step_bf16", seconds, problems, detail, numbers)


# -- bucket packing --------------------------------------------------------------------------------
class _Done:
    def wait(self) -> bool:
        return True


class LoopbackGroup:
    """A one-rank stand-in for a process group: the broadcast leaves the buffer as it is, so
    ``broadcast_tensors`` packs on send and the views it yields are what a receiver would read."""

    def broadcast(self, tensor, root, timeout=None) -> _Done:
        return _Done()


def check_bucket_packing(device: str, seed: int = 0, corrupt: bool = False) -> CheckResult:
    from pope.weight_sync import broadcast_tensors, meta_of

    base, kind = build_model(seed)
    named = [(n, p.detach().to(device)) for n, p in base.named_parameters()]
    named += [(f"bf16.{n}", t.to(torch.bfloat16)) for n, t in named]
    metas = meta_of(named)
    buffers: dict = {}
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    seconds, problems = [], []
    for round_ in range(2):  # the second round reuses the first's buffers with other values
        tensors = [t + round_ for _, t in named]
        _sync(device)
        t0 = time.perf_counter()
        received = [
            (name, view.clone())
            for name, view in broadcast_tensors(
                LoopbackGroup(),
                metas,
                tensors,
                60.0,
                bucket_bytes=BUCKET_BYTES,
                device=device,
                buffers=buffers,
            )
        ]
        _sync(device)
        seconds.append(time.perf_counter() - t0)
        if corrupt:
            received[-1][1].view(-1)[0] += 1
        if [n for n, _ in received] != [m.name for m in metas]:
            problems.append(f"round {round_}: names out of order")
        bad = [n for (n, got), want in zip(received, tensors, strict=True) if not torch.equal(got, want)]
        if bad:
            problems.append(f"round {round_}: {len(bad)} tensors differ (first {bad[0]})")
        if any(got.device.type != torch.device(device).type for _, got in received):
            problems.append(f"round {round_}: a tensor came back off {device}")
    dtypes = {key[1] for key in buffers}
    if len(buffers) <= len(dtypes):
        problems.append(f"{len(buffers)} buckets for {len(dtypes)} dtypes: expected several per dtype")
    best = min(seconds)
    numbers = {"model": kind, "tensors": len(named), "bytes": nbytes, "buckets": len(buffers),
               "bucket_bytes": BUCKET_BYTES, "seconds": seconds, "gb_per_s": nbytes / best / 1e9}  # fmt: skip
    detail = (
        f"{len(named)} tensors, {nbytes / 2**20:.1f} MiB in {len(buffers)} buckets "
        f"({', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}), bit-exact twice; "
        f"best pass {best * 1e3:.2f} ms, {nbytes / best / 1e9:.2f} GB/s"
    )
    return verdict("bucket_packing", best, problems, detail, numbers)


# -- IPC between two processes ---------------------------------------------------------------------
def _ipc_receiver(inbox, outbox, corrupt: bool) -> None:
    outbox.put("ready")
    tensor = inbox.get(timeout=IPC_TIMEOUT_S)
    received = float(tensor.sum(dtype=torch.float64)) + (1.0 if corrupt else 0.0)
    shared = tensor.is_cuda or tensor.is_shared()
    tensor.mul_(2)
    _sync(str(tensor.device))
    outbox.put((received, str(tensor.device), shared))
    inbox.get(timeout=IPC_TIMEOUT_S)  # hold the tensor until the sender has read it back


def check_ipc_transfer(device: str, seed: int = 0, corrupt: bool = False) -> CheckResult:
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_ipc_receiver, args=(inbox, outbox, corrupt), daemon=True)
    proc.start()
    try:
        gen = torch.Generator().manual_seed(seed)
        tensor = torch.randn(IPC_NUMEL, generator=gen).to(device)
        if device == "cpu":
            tensor.share_memory_()
        sent = float(tensor.sum(dtype=torch.float64))
        _sync(device)
        assert outbox.get(timeout=IPC_TIMEOUT_S) == "ready"  # the receiver's start is not timed
        t0 = time.perf_counter()
        inbox.put(tensor)
        received, received_device, shared = outbox.get(timeout=IPC_TIMEOUT_S)
        seconds = time.perf_counter() - t0
        doubled = float(tensor.sum(dtype=torch.float64))
        inbox.put("done")
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    problems = []
    if not math.isclose(received, sent, rel_tol=1e-12, abs_tol=1e-6):
        problems.append(f"receiver's checksum {received!r} != sender's {sent!r}")
    if not math.isclose(doubled, 2 * sent, rel_tol=1e-12, abs_tol=1e-6):
        problems.append(f"sender's tensor after the receiver doubled it: {doubled!r}, expected {2 * sent!r}")
    if torch.device(received_device).type != torch.device(device).type or not shared:
        problems.append(f"receiver got a tensor on {received_device} (shared: {shared})")
    mib = IPC_NUMEL * 4 / 2**20
    via = "CUDA IPC handle" if device.startswith("cuda") else "CPU shared memory"
    numbers = {"bytes": IPC_NUMEL * 4, "via": via, "checksum": sent, "receiver_checksum": received,
               "receiver_device": received_device}  # fmt: skip
    detail = (
        f"{mib:.0f} MiB via {via} to a spawned process on {received_device}: checksums equal "
        f"({sent:.6g}), the receiver's in-place write seen by the sender; "
        f"handle to reply {seconds * 1e3:.1f} ms"
    )
    return verdict("ipc_transfer", seconds, problems, detail, numbers)


RUNNERS = {"learner_step_bf16": check_learner_step, "bucket_packing": check_bucket_packing,
           "ipc_transfer": check_ipc_transfer}  # fmt: skip


def run_checks(device: str, corrupt: set[str] | frozenset = frozenset()) -> list[CheckResult]:
    """Every check on ``device``; SKIP each when ``device`` is CUDA and there is none; a check that
    raises is a FAIL with the error."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        reason = f"no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
        return [CheckResult(name, "SKIP", 0.0, reason) for name in CHECKS]
    results = []
    for name in CHECKS:
        t0 = time.perf_counter()
        try:
            result = RUNNERS[name](device, corrupt=name in corrupt)
        except Exception as exc:  # deliberate: one broken check must not hide the others' results
            result = CheckResult(name, "FAIL", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
        results.append(result)
        print(result.line(), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 when there is no CUDA device")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--corrupt", action="append", default=[], choices=CHECKS,
                        help="damage this check's data on purpose (it must then FAIL)")  # fmt: skip
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    print(
        f"gpu_check: device {args.device}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}",
        flush=True,
    )
    results = run_checks(args.device, set(args.corrupt))
    for result in results:
        if result.status == "SKIP":
            print(result.line(), flush=True)
    failed = [r.name for r in results if r.status == "FAIL"]
    missing_gpu = args.require_gpu and not cuda
    if missing_gpu:
        print("FAIL --require-gpu: this machine has no CUDA device", flush=True)
    if args.json:
        report = {"device": args.device, "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu,
                  "require_gpu": args.require_gpu, "ok": not failed and not missing_gpu,
                  "checks": [asdict(r) for r in results]}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed or missing_gpu else 0


if __name__ == "__main__":
    sys.exit(main())

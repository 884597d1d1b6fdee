"""A generation pool for the method's offline passes (filter-hard, find-prefixes, eval).

The same Ray actors and engines as training (``actors.actor.RolloutActor`` without a stream), fed
batches of prompt texts round-robin; completions are scored with the same killable math-verify
workers as preprocessing. Batches go to every actor at once, so a search over many problems is
one pass through the pool per round, not a loop over problems.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

from pope.config import PopeConfig
from preprocess.scoring import Verifier


class GenerationPool(AbstractContextManager):
    def __init__(self, config: PopeConfig, model_path: str):
        import ray

        from actors.actor import RolloutActor
        from orchestrator.launcher import _process_env, _start_ray

        self.config = config.with_run_id()
        self._started_ray = _start_ray(self.config)
        acfg = self.config.actors
        self.actors = [
            ray.remote(RolloutActor)
            .options(
                name=f"pope-{self.config.run.run_id}-pool{i}",
                num_cpus=acfg.num_cpus,
                num_gpus=acfg.num_gpus,
                resources=acfg.resources or None,
                runtime_env={"env_vars": _process_env(self.config, acfg.torch_threads)},
            )
            .remote(self.config.for_actors(), i, model_path, None)
            for i in range(acfg.num_actors)
        ]
        ray.get([a.__ray_ready__.remote() for a in self.actors])
        self.tokenizer = ray.get(self.actors[0].get_tokenizer.remote())
        workers = max(1, self.config.preprocess.num_workers)
        self.verifiers = [
            Verifier(self.config.preprocess.verify_timeout_s, self.config.preprocess.reasoning_delimiter)
            for _ in range(workers)
        ]
        self._seed_offset = 0  # rollout i of a request samples with seed + i: requests never overlap

    def generate(self, prompts: list[str], num_samples: int, max_new_tokens: int, chunk: int | None = None):
        """For each prompt, ``num_samples`` (text, token count); chunks spread over every actor."""
        import ray

        chunk = chunk or self.config.actors.prompts_per_call
        base = (self.config.run.seed % 4096) << 44
        seeds = [base + self._seed_offset + i * num_samples for i in range(len(prompts))]
        self._seed_offset += len(prompts) * num_samples
        refs = []
        for start in range(0, len(prompts), chunk):
            actor = self.actors[(start // chunk) % len(self.actors)]
            refs.append(
                actor.sample_texts.remote(
                    prompts[start : start + chunk], num_samples, max_new_tokens, seeds[start : start + chunk]
                )
            )
        return [group for part in ray.get(refs) for group in part]

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Reward of each (gold answer, completion), across the verifier processes."""
        if not pairs:
            return []
        shards = [pairs[i :: len(self.verifiers)] for i in range(len(self.verifiers))]

        def run(verifier: Verifier, shard: list[tuple[str, str]]) -> list[float]:
            return [reward for reward, _ in verifier.score_batch(shard)]

        with ThreadPoolExecutor(len(self.verifiers)) as executor:
            results = list(executor.map(run, self.verifiers, shards))
        out = [0.0] * len(pairs)
        for i, shard_rewards in enumerate(results):
            out[i :: len(self.verifiers)] = shard_rewards
        return out

    def close(self) -> None:
        import ray

        for verifier in self.verifiers:
            verifier.close()
        for actor in self.actors:
            ray.get(actor.close.remote())
            ray.kill(actor)
        if self._started_ray:
            ray.shutdown()

    def __exit__(self, *exc) -> None:
        self.close()

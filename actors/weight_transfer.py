"""The engine side of vLLM's weight-transfer API (``vllm.distributed.weight_transfer``), and the
gloo engine of ours that serves it on CPU.

vLLM's worker owns the life cycle of an update: ``init_weight_transfer_engine`` once per group,
then per update ``start_weight_update`` / ``update_weights`` (one or more chunks) /
``finish_weight_update``. Its own engines are ``nccl`` (GPU to GPU) and ``ipc`` (learner and
engine on the same GPU); both need CUDA. ``GlooWeightTransferEngine`` does the same over a gloo
group through host memory (pope/weight_sync.py's bucketed broadcast) and is registered in vLLM's
factory as ``pope_gloo``, so the actor drives every backend through the same four calls.

Loading follows vLLM's layerwise reload, as its NCCL engine does: ``start`` arms it, every received
tensor goes to ``model.load_weights``, ``finish`` repacks what changed (the CPU GEMM layouts).
A model with a tied output head receives no ``lm_head.weight`` (Hugging Face names it once, as the
embedding); the head is loaded from the embedding's tensor, so the reload sees every layer loaded.
(Left unloaded, vLLM warns "ParallelLMHead: Failed to load weights" and puts the head's old
kernel back: the model would decode with the old head.)

The init and update infos (pope/weight_sync.py) cross vLLM's RPC as dicts of lists and numbers.
"""

from __future__ import annotations

import logging

import torch
from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory

from pope.weight_sync import GlooInitInfo, GlooUpdateInfo, broadcast_tensors, checksum, make_group

GLOO_BACKEND = "pope_gloo"  # its name in vLLM's factory (``learner.weight_transfer: gloo``)


def tied_head_weights(model: torch.nn.Module, named: list[tuple[str, torch.Tensor]]) -> list:
    """``lm_head.weight`` for a model whose output head is tied to the embedding, taken from the
    embedding's tensor in ``named``; nothing otherwise (or when ``named`` has its own head)."""
    config = getattr(model, "config", None)
    if not getattr(config, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return []
    names = {n for n, _ in named}
    if "lm_head.weight" in names:
        return []
    embedding = [t for n, t in named if n.endswith("embed_tokens.weight")]
    return [("lm_head.weight", embedding[0])] if embedding else []


def load_tied_head(model: torch.nn.Module, named: list[tuple[str, torch.Tensor]]) -> None:
    """Load the tied head through its own weight loader (the model's ``load_weights`` skips the
    name when the embeddings are tied); under a layerwise reload the loader counts it as loaded."""
    for _, tensor in tied_head_weights(model, named):
        param = model.lm_head.weight
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            param.data.copy_(tensor)
        else:
            loader(param, tensor)


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Weights over a gloo group (the learner is rank 0), loaded with vLLM's layerwise reload."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None
        self._store = None
        # bucket buffers kept between broadcasts: a fresh one costs its page faults on every
        # receive (~260 ms of 1.1 s for SmolLM2-135M, BENCHMARKS.md). Safe because the layerwise
        # reload copies what it loads into the layers' own storage.
        self._buffers: dict = {}
        self.last_checksum: float | None = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self.shutdown()
        rank = init_info.rank_offset + self.parallel_config.rank
        self.group, self._store = make_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size, init_info.timeout_s
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.last_checksum = None
        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict) -> None:
        # the base class ends with ``torch.accelerator.synchronize()``; a gloo receive is done when
        # it returns (and there is no accelerator on CPU)
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer: init_weight_transfer_engine was not called")
        metas = update_info.metas()
        received = list(
            broadcast_tensors(self.group, metas, None, update_info.timeout_s, device=str(self.device), buffers=self._buffers)
        )  # fmt: skip
        self.load(received)
        self.last_checksum = checksum(received)

    def load(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Load ``named`` (Hugging Face names) into the model; between ``start`` and ``finish``."""
        self.model.load_weights(named)
        load_tied_head(self.model, named)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.group = None
        self._store = None


class _RotaryCacheNotice(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" after a reload: the rotary layer's
    cos/sin cache is computed from the config, no checkpoint holds it, and vLLM puts the layer's
    own cache back, which is the right one. Every other layer's notice still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "RotaryEmbedding: Failed to load weights"


def register() -> None:
    """Make ``pope_gloo`` known to vLLM's factory in this process (the engine's worker process
    imports this module through the worker extension)."""
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_RotaryCacheNotice())


register()

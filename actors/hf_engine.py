"""Hugging Face transformers as a generation engine: for machines without vLLM, and the reference
in tests. Weights come over the gloo backend only (the same init and update infos as vLLM's
``pope_gloo`` engine, pope/weight_sync.py) and load in place (copied into the existing tensors)."""

from __future__ import annotations

import torch

from actors.engine import Sample, SamplingSettings
from pope.weight_sync import GlooInitInfo, GlooUpdateInfo, broadcast_tensors, checksum, make_group


class HFEngine:
    def __init__(self, engine_config, model_path: str, seed: int, dtype: str, weight_transfer: str = "gloo"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if weight_transfer != "gloo":
            raise ValueError(f"the HF engine receives weights over gloo only, not {weight_transfer!r}")
        self.config = engine_config
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.params = dict(self.model.named_parameters())
        self.seed = seed
        self.group = None
        self._store = None
        self._buffers: dict = {}  # broadcast buckets, reused

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Sample]]:
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        results = []
        for index, prompt in enumerate(prompts):
            torch.manual_seed(settings.seed_of(index, len(prompts)))  # each prompt its own stream
            input_ids = torch.tensor([prompt] * settings.num_rollouts)
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=0,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                return_dict_in_generate=True,
                output_scores=True,  # processed: temperature and top-p applied, as sampled
            )
            new_tokens = out.sequences[:, len(prompt) :]
            logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            token_lp = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            group = []
            for row in range(settings.num_rollouts):
                ids = new_tokens[row].tolist()
                if eos in ids:
                    end = ids.index(eos) + 1
                    group.append(Sample(ids[:end], token_lp[row, :end].tolist(), "stop"))
                else:
                    group.append(Sample(ids, token_lp[row].tolist(), "length"))
            results.append(group)
        return results

    def init_weight_transfer(self, init_info: dict) -> None:
        info = GlooInitInfo(**init_info)
        self.group, self._store = make_group(
            info.master_address, info.master_port, info.rank_offset, info.world_size, info.timeout_s
        )

    @torch.no_grad()
    def update_weights(self, update_info: dict) -> float:
        info = GlooUpdateInfo(**update_info)
        received = []
        for name, tensor in broadcast_tensors(
            self.group, info.metas(), None, info.timeout_s, buffers=self._buffers
        ):
            if name not in self.params:
                raise KeyError(f"broadcast tensor {name!r} is not a parameter of the HF engine's model")
            self.params[name].copy_(tensor)
            received.append((name, tensor))
        return checksum(received)

    @torch.no_grad()
    def greedy_logprobs(self, prompt: list[int], num_tokens: int) -> tuple[list[int], list[float]]:
        out = self.model.generate(
            input_ids=torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=num_tokens,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        ids = out.sequences[0, len(prompt) :].tolist()
        lps = [
            torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ids, strict=True)
        ]
        return ids, lps

    def close(self) -> None:
        self.group = None

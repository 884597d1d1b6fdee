"""Supervised training of the small built-in models (the demo model and the v2 testbed's base): one
optimizer step on (prompt, target) token pairs with the loss on the target tokens only."""

from __future__ import annotations


def collate(docs: list[tuple[list[int], list[int], tuple[int, ...]]], pad_id: int):
    """(prompt ids, target ids, masked target positions) -> right-padded (input_ids, attention_mask,
    labels); labels are -100 outside the targets and at the masked positions, so the loss is on the
    other target tokens only."""
    import torch

    width = max(len(p) + len(t) for p, t, _ in docs)
    ids = torch.full((len(docs), width), pad_id)
    labels = torch.full((len(docs), width), -100)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    for row, (prompt, target, masked) in enumerate(docs):
        ids[row, : len(prompt) + len(target)] = torch.tensor(prompt + target)
        labels[row, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
        for position in masked:
            labels[row, len(prompt) + position] = -100
        mask[row, : len(prompt) + len(target)] = 1
    return ids, mask, labels


def train_step(model, optimizer, docs, pad_id: int, micro_batches: int = 1) -> float:
    """One step on (prompt ids, target ids) pairs: the mean loss per target token of the whole batch,
    accumulated over length-sorted micro-batches; grad norm clipped at 1."""
    import torch

    docs = sorted(docs, key=lambda d: len(d[0]) + len(d[1]))
    size = -(-len(docs) // micro_batches)
    num_targets = sum(
        len(t) - len(m) for _, t, m in docs
    )  # the last prompt position predicts the first target
    optimizer.zero_grad()
    total = 0.0
    for start in range(0, len(docs), size):
        ids, mask, labels = collate(docs[start : start + size], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = (
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            / num_targets
        )
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return total

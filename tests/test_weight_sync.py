"""broadcast_tensors over a real 2-rank gloo group (both ranks in this process, one per thread)."""

from __future__ import annotations

import threading

import pytest
import torch

from broker.embedded import free_port
from pope.weight_sync import broadcast_tensors, checksum, make_group, meta_of

pytestmark = pytest.mark.unit


def _named(seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        ("a", torch.randn(3, 4, generator=g)),
        ("b_transposed", torch.randn(4, 5, generator=g).t()),  # not contiguous
        ("c", torch.randn(7, generator=g).to(torch.bfloat16)),  # its own bucket (dtype)
        ("d", torch.randn(2, 2, 2, generator=g)),
        ("e", torch.randn(600, generator=g)),  # over the small bucket size below: a bucket of its own
    ]


def test_broadcast_tensors_delivers_every_tensor_exactly_with_reused_buffers():
    port = free_port()
    groups: dict[int, object] = {}
    stores = []

    def join(rank: int) -> None:
        group, store = make_group("127.0.0.1", port, rank, 2, 30.0)
        groups[rank] = group
        stores.append(store)

    threads = [threading.Thread(target=join, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    send_buffers: dict = {}
    recv_buffers: dict = {}
    for seed in (0, 1):  # twice: the second broadcast reuses both ends' buffers
        named = _named(seed)
        metas = meta_of(named)
        received: list = []

        def receive(metas=metas, received=received) -> None:
            for name, view in broadcast_tensors(groups[1], metas, None, 30.0, 1024, buffers=recv_buffers):
                received.append((name, view.clone()))

        receiver = threading.Thread(target=receive)
        receiver.start()
        sent = [
            (n, v)
            for n, v in broadcast_tensors(
                groups[0], metas, [t for _, t in named], 30.0, 1024, buffers=send_buffers
            )
        ]
        receiver.join(30)
        assert [n for n, _ in received] == [n for n, _ in named] == [n for n, _ in sent]
        for (_, want), (_, got) in zip(named, received, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got, want)
        assert checksum(received) == checksum(named)
    # a, b, d, e in float32 buckets, c in bfloat16: 4 buckets, each kept on both ends
    assert len(send_buffers) == len(recv_buffers) == 4


def test_checksum_is_the_float64_sum():
    t = torch.tensor([1.0, 2.5, -0.25], dtype=torch.float32)
    assert checksum([("t", t), ("u", torch.ones(2, 2))]) == 3.25 + 4.0


def test_checksum_sums_every_dtype_and_layout_in_float64():
    # 2^24 + 1 is not a float32: a float32 accumulator would drop the 1s, float64 keeps them
    big = torch.tensor([2.0**24, 1.0, 1.0, 1.0], dtype=torch.float32)
    ones = torch.ones(4, dtype=torch.float16)
    half = torch.tensor([0.5, -1.5], dtype=torch.bfloat16)  # summed by torch (numpy has no bfloat16)
    strided = torch.arange(6, dtype=torch.float32).view(2, 3).T  # a non-contiguous view: 0+1+...+5
    assert checksum([("b", big), ("o", ones), ("h", half), ("s", strided)]) == 2.0**24 + 3 + 4 - 1.0 + 15
    grad = torch.ones(3, requires_grad=True)
    assert checksum([("g", grad)]) == 3.0

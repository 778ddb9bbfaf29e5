"""`device_batches`: the batches reach the device unchanged, in order, each pulled from the source only when taken."""

from __future__ import annotations

import pytest
import torch

from contrastive.data.prefetch import device_batches


def _source(n: int, pulled: list[int]):
    for i in range(n):
        pulled.append(i)
        g = torch.Generator().manual_seed(i)
        yield {"images": torch.randn(4, 3, 8, 8, generator=g), "tokens": {"input_ids": torch.arange(i, i + 6)},
               "captions": [f"caption {i}"] * 4}


def _expected(n: int):
    return list(_source(n, []))


def _assert_same(got: dict, want: dict, device: str) -> None:
    assert got["captions"] == want["captions"]
    assert got["images"].device.type == device and got["tokens"]["input_ids"].device.type == device
    torch.testing.assert_close(got["images"].cpu(), want["images"], rtol=0, atol=0)
    torch.testing.assert_close(got["tokens"]["input_ids"].cpu(), want["tokens"]["input_ids"], rtol=0, atol=0)


@pytest.mark.parametrize("side_stream", [True, False])
def test_cpu_batches_unchanged_and_pulled_lazily(side_stream):
    pulled: list[int] = []
    out = device_batches(_source(5, pulled), torch.device("cpu"), side_stream)
    want = _expected(5)
    for i in range(5):
        got = next(out)
        assert pulled == list(range(i + 1))  # nothing read ahead: bad-sample counts and resume positions stay exact
        _assert_same(got, want[i], "cpu")
    assert next(out, None) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the copy-stream path)")
@pytest.mark.parametrize("side_stream", [True, False])
def test_cuda_copy_stream_batches_are_ready_for_the_step(side_stream):
    pulled: list[int] = []
    pinned = ({k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
              for b in _source(6, pulled))
    want = _expected(6)
    busy = torch.randn(4096, 4096, device="cuda")
    for i, got in enumerate(device_batches(pinned, torch.device("cuda"), side_stream)):
        assert pulled == list(range(i + 1))
        busy = busy @ busy / 64  # keep the compute stream busy while the next copy is issued
        total = got["images"].sum()  # runs on the compute stream: must see the copied values
        torch.testing.assert_close(total.cpu(), want[i]["images"].sum(), rtol=1e-5, atol=1e-4)
        _assert_same(got, want[i], "cuda")
    assert len(pulled) == 6

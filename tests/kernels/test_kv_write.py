"""KV-cache write Triton kernel against its torch reference."""

import pytest
import torch

from llmctl.kernels.kv_write import write_kv, write_kv_ref


def _case(device, num_tokens, num_blocks, block_size, nkv, hd, dtype, skip_every=0):
    k = torch.randn(num_tokens, nkv, hd, device=device).to(dtype)
    v = torch.randn(num_tokens, nkv, hd, device=device).to(dtype)
    slots = torch.randperm(num_blocks * block_size, device=device)[:num_tokens]
    if skip_every:
        slots[::skip_every] = -1  # padding tokens: never written
    cache = torch.randn(2, num_blocks, block_size, nkv, hd, device=device).to(dtype)
    return k, v, cache, slots.to(torch.int64)


@pytest.mark.parametrize(
    "num_tokens,num_blocks,block_size,nkv,hd,skip_every",
    [
        (1, 2, 16, 1, 64, 0),
        (7, 3, 16, 2, 80, 3),
        (33, 4, 16, 8, 128, 2),
        (511, 40, 16, 2, 96, 5),
        (17, 3, 8, 1, 256, 0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_matches_reference(device, num_tokens, num_blocks, block_size, nkv, hd, skip_every, dtype):
    k, v, cache, slots = _case(device, num_tokens, num_blocks, block_size, nkv, hd, dtype, skip_every=skip_every)
    expected = cache.clone()
    write_kv_ref(k, v, expected, slots)
    write_kv(k, v, cache, slots)
    torch.testing.assert_close(cache, expected, atol=0, rtol=0)  # a copy: bit-exact


def test_write_kv_casts_and_reads_strided_views(device):
    """k/v as views of a fused qkv output (strided rows), fp32 values into a bf16 cache, int32 slots."""
    nkv, hd, T = 2, 64, 9
    qkv = torch.randn(T, (4 + 2 * nkv) * hd, device=device)
    k = qkv[:, 4 * hd : (4 + nkv) * hd].view(T, nkv, hd)
    v = qkv[:, (4 + nkv) * hd :].view(T, nkv, hd)
    slots = torch.tensor([0, 15, 16, 17, -1, 31, 32, 47, -1], device=device, dtype=torch.int32)
    cache = torch.zeros(2, 3, 16, nkv, hd, device=device, dtype=torch.bfloat16)
    expected = cache.clone()
    write_kv_ref(k, v, expected, slots)
    write_kv(k, v, cache, slots)
    # The fp32 -> bf16 cast rounds to nearest on CUDA (bit-exact), but Triton's CPU interpreter truncates:
    # there one bf16 ulp (relative 2^-7) of difference is allowed.
    exact = device.type == "cuda"
    torch.testing.assert_close(cache, expected, atol=0, rtol=0 if exact else 2**-7)
    assert cache.abs().sum() > 0


def test_write_kv_rejects_wrong_head_shape(device):
    k = torch.randn(3, 2, 64, device=device)
    with pytest.raises(ValueError, match="do not match"):
        write_kv(k, k, torch.zeros(2, 2, 16, 4, 64, device=device), torch.zeros(3, dtype=torch.int64, device=device))

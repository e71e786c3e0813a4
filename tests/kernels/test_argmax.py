"""Row-wise argmax (greedy sampling) against torch.argmax: awkward vocab sizes, ties, -inf and NaN rows."""

import pytest
import torch

from llmctl.kernels import argmax as argmax_mod
from llmctl.kernels.argmax import ARGMAX_BLOCK, argmax, argmax_ref
from llmctl.kernels.dispatch import get_op


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (2, ARGMAX_BLOCK - 1), (1, ARGMAX_BLOCK), (2, ARGMAX_BLOCK + 1),
                                        (5, 3 * ARGMAX_BLOCK + 17), (1, 128256)])
def test_argmax_matches_torch(device, dtype, rows, vocab):
    gen = torch.Generator().manual_seed(rows * 131 + vocab)
    x = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype).to(device)
    got = argmax(x)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    assert torch.equal(got, argmax_ref(x))


def test_ties_take_the_first_index_across_blocks(device):
    """Equal maxima in several blocks (and within one): the lowest index wins, as torch.argmax's."""
    vocab = 3 * ARGMAX_BLOCK + 5
    x = torch.zeros(4, vocab)
    x[0, [ARGMAX_BLOCK + 3, 2 * ARGMAX_BLOCK + 1, 7]] = 5.0  # first at 7
    x[1, [2 * ARGMAX_BLOCK + 1, ARGMAX_BLOCK + 3]] = 5.0  # first at ARGMAX_BLOCK + 3
    x[2] = 1.0  # every column equal: 0
    x[3, -1] = 2.0  # the last, partial block
    x = x.to(device)
    assert argmax(x).tolist() == [7, ARGMAX_BLOCK + 3, 0, vocab - 1] == argmax_ref(x).tolist()


def test_masked_and_nan_rows(device):
    """-inf masks (min_tokens) are never picked unless everything is masked; NaN counts as the largest (torch)."""
    vocab = 2 * ARGMAX_BLOCK + 9
    x = torch.randn(4, vocab)
    x[0, :] = float("-inf")  # all masked: index 0
    x[1, :-1] = float("-inf")  # one survivor in the last block
    x[2, [ARGMAX_BLOCK + 2, 2 * ARGMAX_BLOCK + 4]] = float("nan")  # first NaN wins over larger numbers
    x[2, 0] = 1e30
    x[3, 5] = float("inf")
    x = x.to(device)
    assert argmax(x).tolist() == [0, vocab - 1, ARGMAX_BLOCK + 2, 5] == argmax_ref(x).tolist()


def test_strided_rows(device):
    """A (B, V) view of a wider buffer (rows strided past V) reads only its own columns."""
    wide = torch.randn(3, 5000).to(device)
    wide[:, 4500:] = 1e9  # beyond the view: must not be seen
    view = wide[:, :4500]
    assert torch.equal(argmax(view), argmax_ref(view))
    cols = torch.randn(4500, 3).to(device).t()  # column-major rows: copied once
    assert torch.equal(argmax(cols), argmax_ref(cols))


def test_bad_input_is_a_clear_error(device):
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        argmax(torch.randn(2, 3, 4, device=device))
    with pytest.raises(ValueError, match="empty"):
        argmax(torch.randn(2, 0, device=device))
    assert argmax(torch.randn(0, 7, device=device)).shape == (0,)


def test_dispatch_picks_the_triton_argmax_on_cuda():
    assert get_op("argmax", "cpu") is argmax_mod.argmax_ref
    assert get_op("argmax", "cuda") is argmax_mod.argmax

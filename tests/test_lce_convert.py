"""Padding plans of r2b.lce.convert: PyTorch's padding as TFLite's SAME, VALID or a PAD op."""

import pytest

pytest.importorskip("flatbuffers", reason="r2b.lce needs the [lce] extra (flatbuffers)")

from r2b.lce.convert import _plan_dim


@pytest.mark.parametrize(
    "n, k, s, p, mode",
    [
        (32, 3, 1, 1, "SAME"),  # stride 1: TFLite's SAME pads 1 and 1, as PyTorch
        (32, 3, 2, 1, "PAD"),  # even size, stride 2: PyTorch reads the top row of padding
        (7, 3, 2, 1, "SAME"),  # odd size, stride 2: both pad 1 and 1
        (224, 7, 2, 3, "PAD"),  # the ImageNet stem: PyTorch 3 before, SAME 2
        (225, 7, 2, 3, "SAME"),
        (112, 3, 2, 1, "PAD"),  # the stem max-pool at 224
        (8, 2, 2, 0, "VALID"),  # the shortcut's average pool
        (5, 1, 1, 0, "VALID"),
    ],
)
def test_padding_plan(n, k, s, p, mode):
    got, before, after, out = _plan_dim(n, k, s, p)
    assert got == mode
    assert out == (n + 2 * p - k) // s + 1
    if mode == "PAD":
        assert before == p and (n + before + after - k) // s + 1 == out

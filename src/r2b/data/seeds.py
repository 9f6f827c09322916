"""Seeds derived from tuples of integers, so every random stream is a pure function of its key.

``derive_seed(seed, epoch)`` seeds the shuffle of one epoch, ``derive_seed(seed, epoch, index)``
the random crop of one streamed sample. numpy's ``SeedSequence`` hashes the key so that nearby
keys give unrelated streams.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers."""
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def generator_for(*key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*key)``."""
    return torch.Generator().manual_seed(derive_seed(*key))

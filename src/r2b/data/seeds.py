"""Seeds derived from tuples of integers, so every random stream is a pure function of its key.

``derive_seed(seed, epoch)`` seeds the shuffle of one epoch, ``derive_seed(seed, epoch, index)``
the random crop of one streamed sample. numpy's ``SeedSequence`` hashes the key so that nearby
keys give unrelated streams.

``seed_global_rngs(*key)`` seeds the process-wide generators (torch's, numpy's legacy
``np.random`` and Python's ``random``) from one key. r2b's own randomness never uses numpy's or
Python's global generator, but their states are saved in ``state.safetensors`` and any library
code that draws from them should repeat between identical runs, so they are seeded too.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers."""
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def generator_for(*key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*key)``."""
    return torch.Generator().manual_seed(derive_seed(*key))


def seed_global_rngs(*key: int) -> int:
    """Seed torch's, numpy's and Python's global generators from ``derive_seed(*key)``."""
    seed = derive_seed(*key)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return seed

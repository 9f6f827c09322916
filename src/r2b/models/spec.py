"""The description of a binary network that its consumers read: the packed engine, the summary
and the exporters (LCE flatbuffers, OpenVINO IR).

A binary network built from r2b's blocks is ``stem -> half blocks -> pool -> classifier``. Its
model owns the description (``model.spec()``, a ``BinaryNetSpec``); the consumers never look at
attribute names or model names. A half block -- one per binary convolution -- computes::

    y   = pre(x)                        per-channel affine: BatchNorm (r2b, strong baseline),
                                        a learned shift x + b (ReActNet's RSign), or none
    c   = conv(sign(y))                 BinaryConv2d: conv(pad(sign y, pad_value), sign W) * alpha
    c   = c * s                         learned per-channel scale s (strong baseline), or
        | c * gate(y)                   the data-driven gate fed by y (Real-to-Binary), or nothing
    c   = post(c)                       BatchNorm after the conv (Bi-Real, ReActNet), or nothing
    out = act(c) + shortcut(x)          act_after_add False (strong baseline, Real-to-Binary)
        | act(c + shortcut(x))          act_after_add True  (ReActNet)

``act`` is a PReLU (one slope per channel or one shared), an ``RPReLU`` (PReLU between two learned
shifts) or nothing (Bi-Real); ``shortcut`` is the identity (``None``) or a real module (AvgPool 2x2
-> 1x1 conv -> BatchNorm on a downsampling block). Every step is a module or a tensor of the
float model, so a consumer can either run it as it is (PyTorch, exact by construction) or
translate it and check the translation against it.

What the next half block needs from this one is its output ``out`` and, when it has a gate, its
``y = pre(out)`` too (``needs_y``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from r2b.layers import BinaryConv2d


@dataclass(frozen=True)
class HalfBlockSpec:
    """One binary half block of a float model (see the module docstring for the computation).

    ``name`` is the block's module path in the model (e.g. ``"blocks.0.half1"``), so a consumer can
    name what it writes; the other fields are the model's own modules and tensors (not copies).
    """

    name: str
    pre: nn.Module | None
    conv: BinaryConv2d | None
    scale: torch.Tensor | None
    gate: nn.Module | None
    post: nn.Module | None
    act: nn.Module | None
    act_after_add: bool
    shortcut: nn.Module | None

    @property
    def needs_y(self) -> bool:
        """True when the block reads ``y = pre(x)`` besides its sign (the gate does)."""
        return self.gate is not None

    @property
    def downsamples(self) -> bool:
        """True when the shortcut is a real module rather than the identity."""
        return self.shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output computed from the description (the model's ``forward`` order)."""
        y = x if self.pre is None else self.pre(x)
        s = x if self.shortcut is None else self.shortcut(x)
        return self.after_conv(self.conv(y), y, s)

    def after_conv(self, c: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The block's output from its conv output ``c``, ``y = pre(x)`` and the shortcut ``s``:
        scaling, post, activation and the add, in the model's order (``conv`` is not used)."""
        if self.gate is not None:
            c = c * self.gate(y)
        elif self.scale is not None:
            c = c * self.scale.view(1, -1, 1, 1)
        if self.post is not None:
            c = self.post(c)
        if self.act is None:
            return c + s
        return self.act(c + s) if self.act_after_add else self.act(c) + s


@dataclass(frozen=True)
class BinaryNetSpec:
    """A whole binary network: ``fc(flatten(pool(halves(stem(x)))))``."""

    stem: nn.Module
    halves: tuple[HalfBlockSpec, ...]
    pool: nn.Module
    fc: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits computed from the description (equal to the model's own forward)."""
        x = self.stem(x)
        for half in self.halves:
            x = half.forward(x)
        return self.fc(torch.flatten(self.pool(x), 1))

    def binary_convs(self) -> list[BinaryConv2d]:
        """The binary convolutions in order."""
        return [h.conv for h in self.halves]

"""ResNet-18 family: the real teacher, the strong baseline, Real-to-Binary (docs/method.md sec. 2).

Binary half block (paper Sec. 4.1, Fig. 1), one per binary conv::

    y   = BN(x)                       real input; BN's bias acts as a learnable threshold
    c   = BinaryConv3x3(q(y))         q = tanh (fp), sign (ban, bnn); weights sign(W) in bnn
    c   = c * s          (strong baseline: learned per-channel scale)
        | c * G(y)       (Real-to-Binary: data-driven gate fed by y)
    out = PReLU(c) + shortcut(x)      shortcut: identity, or AvgPool2x2 -> 1x1 conv -> BN

That is the strong baseline's and Real-to-Binary's half block; Bi-Real Net and ReActNet use
other parts (no pre-sign BN or a learned shift, a BN after the conv, RPReLU after the add):
``HalfBlockDesign`` names the parts of each family, ``r2b.models.spec`` the computation.

Two half blocks make a basic block; its output (after the second shortcut add) is one of the 8
transfer points of attention matching, returned by ``forward_with_features``.

The teacher is a standard ResNet-18 (He et al. 2016) with torchvision's parameter names, so
torchvision's ImageNet weights load into the ImageNet-stem model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from r2b.layers import BinaryConv2d, Gate, LearnedScale, LearnedShift, PReLU, RPReLU
from r2b.models.registry import DEFAULT_STEM, STAGES, StemDesign, register_model, stem_design
from r2b.models.spec import BinaryNetSpec, HalfBlockSpec

BASE_WIDTHS = (64, 128, 256, 512)
GATE_REDUCTION = 8

#: (input quantizer, weight quantizer) of each training step; "sign" is the chosen sign quantizer.
_STAGE_QUANTIZERS = {"fp": ("tanh", None), "ban": ("sign", None), "bnn": ("sign", "sign")}


def _widths(width: float) -> list[int]:
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return [max(1, round(c * width)) for c in BASE_WIDTHS]


def _check(stem: str, stage: str | None = None) -> StemDesign:
    """The registered design of ``stem``; ``ValueError`` for an unknown stem or stage."""
    design = stem_design(stem)
    if stage is not None and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return design


def _block_plan(widths: list[int]) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of the 8 basic blocks of a ResNet-18."""
    plan, c_in = [], widths[0]
    for i, c_out in enumerate(widths):
        for j in range(2):
            stride = 2 if (i > 0 and j == 0) else 1
            plan.append((c_in, c_out, stride))
            c_in = c_out
    return plan


# --------------------------------------------------------------------------- real teacher


class BasicBlock(nn.Module):
    """Standard residual block: conv-BN-ReLU, conv-BN, add shortcut, ReLU (torchvision names)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """Real-valued ResNet-18 teacher; its stem's conv and max-pool follow the registered
    ``StemDesign`` (``stem="cifar"``: a 3x3 stride-1 conv and no max-pool)."""

    def __init__(self, num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0):
        super().__init__()
        design = _check(stem)
        widths = _widths(width)
        self.conv1 = _stem_conv(design, widths[0])
        self.maxpool = _stem_pool(design) or nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        plan = _block_plan(widths)
        for i in range(4):
            blocks = [BasicBlock(*plan[2 * i + j]) for j in range(2)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def blocks(self) -> list[nn.Module]:
        """The 8 basic blocks in order."""
        return [b for i in range(4) for b in getattr(self, f"layer{i + 1}")]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for block in self.blocks():
            x = block(x)
            features.append(x)
        return self.fc(torch.flatten(self.avgpool(x), 1)), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


# --------------------------------------------------------------------------- binary family


class Downsample(nn.Module):
    """Real shortcut of a downsampling half block: AvgPool 2x2/2 -> 1x1 conv (no bias) -> BN."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(stride, stride) if stride > 1 else nn.Identity()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


@dataclass(frozen=True)
class HalfBlockDesign:
    """Which parts a family's half block has (the computation: ``r2b.models.spec``).

    - ``pre``: what the sign reads: ``"bn"`` BatchNorm of the input, ``"shift"`` a learned
      per-channel shift (ReActNet's RSign), ``"none"`` the input itself (Bi-Real Net);
    - ``scaling`` of the conv output: ``"scale"`` learned per channel, ``"gate"`` the data-driven
      gate fed by ``pre(x)``, ``"none"``;
    - ``post_bn``: a BatchNorm after the conv (Bi-Real Net, ReActNet);
    - ``act``: ``"prelu"``, ``"rprelu"`` (ReActNet) or ``"none"``; ``act_after_add``: the
      activation reads the sum with the shortcut instead of the conv branch alone.
    """

    pre: str = "bn"
    scaling: str = "scale"
    post_bn: bool = False
    act: str = "prelu"
    act_after_add: bool = False

    def __post_init__(self) -> None:
        for field, value, choices in (
            ("pre", self.pre, ("bn", "shift", "none")),
            ("scaling", self.scaling, ("scale", "gate", "none")),
            ("act", self.act, ("prelu", "rprelu", "none")),
        ):
            if value not in choices:
                raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(choices)}")


class HalfBlock(nn.Module):
    """One binary conv with the parts its family's ``HalfBlockDesign`` names (``spec`` describes
    it for the engine and the exporters; ``forward`` computes the same thing)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        design: HalfBlockDesign,
        input_quantizer: str,
        weight_quantizer: str | None,
        weight_scale: bool,
        pad_value: float,
    ) -> None:
        super().__init__()
        self.act_after_add = design.act_after_add
        if design.pre == "bn":
            self.bn = nn.BatchNorm2d(c_in)
        elif design.pre == "shift":
            self.shift = LearnedShift(c_in)
        self.conv = BinaryConv2d(
            c_in, c_out, 3, stride, 1,
            input_quantizer=input_quantizer,
            weight_quantizer=weight_quantizer,
            pad_value=pad_value,
            weight_scale=weight_scale,
        )  # fmt: skip
        if design.scaling == "scale":
            self.scale = LearnedScale(c_out)
        elif design.scaling == "gate":
            self.gate = Gate(c_in, c_out, GATE_REDUCTION)
        if design.post_bn:
            self.post_bn = nn.BatchNorm2d(c_out)
        if design.act == "prelu":
            self.act = PReLU(c_out)
        elif design.act == "rprelu":
            self.act = RPReLU(c_out)
        self.shortcut = (
            Downsample(c_in, c_out, stride) if (stride != 1 or c_in != c_out) else nn.Identity()
        )

    def _pre(self) -> nn.Module | None:
        """The module whose output the sign reads (``None``: the input itself)."""
        for name in ("bn", "shift"):
            if hasattr(self, name):
                return getattr(self, name)
        return None

    def spec(self, name: str) -> HalfBlockSpec:
        """This block as the engine and the exporters read it (``name``: its module path)."""
        scale = getattr(self, "scale", None)
        return HalfBlockSpec(
            name=name,
            pre=self._pre(),
            conv=self.conv,
            scale=None if scale is None else scale.scale,
            gate=getattr(self, "gate", None),
            post=getattr(self, "post_bn", None),
            act=getattr(self, "act", None),
            act_after_add=self.act_after_add,
            shortcut=None if isinstance(self.shortcut, nn.Identity) else self.shortcut,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._pre()
        y = x if pre is None else pre(x)
        c = self.conv(y)
        if hasattr(self, "gate"):
            c = c * self.gate(y)
        elif hasattr(self, "scale"):
            c = self.scale(c)
        if hasattr(self, "post_bn"):
            c = self.post_bn(c)
        act = getattr(self, "act", None)
        if act is None:
            return c + self.shortcut(x)
        if self.act_after_add:
            return act(c + self.shortcut(x))
        return act(c) + self.shortcut(x)


class BinaryBasicBlock(nn.Module):
    """Two half blocks; the output is a transfer point of attention matching."""

    def __init__(self, c_in: int, c_out: int, stride: int, **half_kwargs) -> None:
        super().__init__()
        self.half1 = HalfBlock(c_in, c_out, stride, **half_kwargs)
        self.half2 = HalfBlock(c_out, c_out, 1, **half_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.half2(self.half1(x))


class BinaryResNet18(nn.Module):
    """Binary ResNet-18 with a shortcut around every binary conv, in the training step ``stage``
    (fp, ban or bnn); ``design`` names the parts of its half blocks (``HalfBlockDesign``): the
    strong baseline, Real-to-Binary, Bi-Real Net and ReActNet differ only there and in
    ``stem_act``.

    ``activation_quantizer`` names the sign quantizer ("ste_sign" or "approx_sign"); in ``bnn``
    the weights use ``ste_sign``. ``weight_scale`` multiplies binary convs by mean|W| in ``bnn``.
    ``pad_value`` is the constant that binary convs pad their quantized input with.
    ``stem_act``: the stem's conv -> BN is followed by a PReLU (True) or nothing.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        stem: str = DEFAULT_STEM,
        width: float = 1.0,
        stage: str = "bnn",
        design: HalfBlockDesign = HalfBlockDesign(),
        activation_quantizer: str = "ste_sign",
        weight_scale: bool = True,
        pad_value: float = 1.0,
        stem_act: bool = True,
    ) -> None:
        super().__init__()
        stem_plan = _check(stem, stage)
        self.stage = stage
        widths = _widths(width)
        q_in, q_w = _STAGE_QUANTIZERS[stage]
        q_in = activation_quantizer if q_in == "sign" else q_in
        q_w = "ste_sign" if q_w == "sign" else None
        self.stem = _binary_stem(stem_plan, widths[0], stem_act)
        half_kwargs = dict(
            design=design, input_quantizer=q_in, weight_quantizer=q_w,
            weight_scale=weight_scale, pad_value=pad_value,
        )  # fmt: skip
        self.blocks = nn.ModuleList(
            BinaryBasicBlock(*plan, **half_kwargs) for plan in _block_plan(widths)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.fc(torch.flatten(self.pool(x), 1)), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def spec(self) -> BinaryNetSpec:
        """The network as the packed engine, the summary and the exporters read it."""
        halves = tuple(
            half.spec(f"blocks.{i}.{part}")
            for i, block in enumerate(self.blocks)
            for part, half in (("half1", block.half1), ("half2", block.half2))
        )
        return BinaryNetSpec(self.stem, halves, self.pool, self.fc)

    def binary_convs(self) -> list[BinaryConv2d]:
        """The 16 binary convolutions in order."""
        return [m for m in self.modules() if isinstance(m, BinaryConv2d)]


def _stem_conv(design: StemDesign, channels: int) -> nn.Conv2d:
    """The stem's conv: ``kernel x kernel``, ``stride``, padding ``kernel // 2``, no bias."""
    k = design.kernel
    return nn.Conv2d(3, channels, k, design.stride, k // 2, bias=False)


def _stem_pool(design: StemDesign) -> nn.MaxPool2d | None:
    """The stem's 3x3/2 max-pool, or ``None`` when its design has none."""
    return nn.MaxPool2d(3, 2, 1) if design.max_pool else None


def _binary_stem(design: StemDesign, channels: int, act: bool) -> nn.Sequential:
    """Real stem of a binary family: conv (``_stem_conv``) -> BN [-> PReLU] [-> max-pool]."""
    layers = [_stem_conv(design, channels), nn.BatchNorm2d(channels)]
    if act:
        layers.append(PReLU(channels))
    pool = _stem_pool(design)
    if pool is not None:
        layers.append(pool)
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, as torchvision's ResNet); BN weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- registered builders


@register_model("resnet18", binary=False)
def resnet18(num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0) -> ResNet18:
    """Real ResNet-18: the teacher of the first step."""
    return ResNet18(num_classes, stem, width)


#: Half-block designs of the binary families (``HalfBlockDesign``).
STRONG_BASELINE = HalfBlockDesign(pre="bn", scaling="scale", act="prelu")
REAL_TO_BINARY = HalfBlockDesign(pre="bn", scaling="gate", act="prelu")
BI_REAL = HalfBlockDesign(pre="none", scaling="none", post_bn=True, act="none")
REACTNET = HalfBlockDesign(pre="shift", scaling="none", post_bn=True, act="rprelu",
                           act_after_add=True)  # fmt: skip


@register_model("sb_resnet18", binary=True)
def sb_resnet18(
    num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0, stage: str = "bnn",
    **options,
) -> BinaryResNet18:  # fmt: skip
    """Strong baseline: binary ResNet-18, learned per-channel output scale (paper Sec. 4.1)."""
    return BinaryResNet18(num_classes, stem, width, stage, design=STRONG_BASELINE, **options)


@register_model("r2b_resnet18", binary=True)
def r2b_resnet18(
    num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0, stage: str = "bnn",
    **options,
) -> BinaryResNet18:  # fmt: skip
    """Real-to-Binary: binary ResNet-18 with the data-driven gate (paper Sec. 4.2)."""
    return BinaryResNet18(num_classes, stem, width, stage, design=REAL_TO_BINARY, **options)


@register_model("bireal_resnet18", binary=True)
def bireal_resnet18(
    num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0, stage: str = "bnn",
    activation_quantizer: str = "approx_sign", **options,
) -> BinaryResNet18:  # fmt: skip
    """Bi-Real Net 18 (Liu et al., ECCV 2018): ``sign(x) -> binary conv -> BN -> + x`` around
    every binary conv, the approx-sign gradient (their Eq. 4), magnitude-aware weights
    ``mean|W| sign(W)`` (their Sec. 3.2; here the mean|W| weight scale, whose gradient flows
    through mean|W| [choice]), real-valued
    AvgPool -> 1x1 conv -> BN downsample shortcuts, a conv -> BN [-> max-pool] stem."""
    return BinaryResNet18(
        num_classes, stem, width, stage, design=BI_REAL,
        activation_quantizer=activation_quantizer, stem_act=False, **options,
    )  # fmt: skip


@register_model("reactnet_resnet18", binary=True)
def reactnet_resnet18(
    num_classes: int = 1000, stem: str = DEFAULT_STEM, width: float = 1.0, stage: str = "bnn",
    activation_quantizer: str = "approx_sign", **options,
) -> BinaryResNet18:  # fmt: skip
    """ReActNet's ResNet-18 variant (Liu et al., ECCV 2020; the Bi-Real-based net of their
    release): Bi-Real's blocks with RSign (``sign(x + b)``, a learned per-channel threshold)
    before every binary conv and RPReLU after the shortcut add: ``RPReLU(BN(conv(RSign(x))) +
    shortcut(x))``; approx-sign gradient, mean|W| weight scale (its gradient flows through
    mean|W| as in every r2b binary conv [choice: the authors' code treats it as a constant])."""
    return BinaryResNet18(
        num_classes, stem, width, stage, design=REACTNET,
        activation_quantizer=activation_quantizer, stem_act=False, **options,
    )  # fmt: skip

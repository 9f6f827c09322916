"""Per-channel normalisation constants (RGB, images scaled to [0, 1]).

``x_normalised = (x / 255 - mean) / std`` per channel.

- CIFAR-10: mean and standard deviation of the 50,000 training images, per pixel over all images
  (the values widely used with CIFAR-10, e.g. in airbench and timm's CIFAR recipes).
- CIFAR-100: the same statistics of CIFAR-100's training images.
- ImageNet: torchvision's ImageNet constants (the ones its pretrained weights expect).

The embedded default data and CIFAR-style folders (images of at most 64 pixels a side) use the
CIFAR-10 constants; larger folders use ImageNet's.
"""

from __future__ import annotations

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Alias: the constants used for "cifar"-kind data unless a dataset says otherwise.
CIFAR_MEAN, CIFAR_STD = CIFAR10_MEAN, CIFAR10_STD

#: name -> (mean, std)
MEAN_STD = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

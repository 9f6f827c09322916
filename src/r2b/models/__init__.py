"""Models: the real ResNet-18 teacher and the binary ResNet-18 family, through a registry."""

from r2b.models import resnet as _resnet  # noqa: F401  (registers the builders)
from r2b.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]

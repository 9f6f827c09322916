"""Models: the real ResNet-18 teacher and the binary ResNet-18 families (strong baseline,
Real-to-Binary, Bi-Real Net, ReActNet), through a registry; ``model.spec()`` describes a binary
network to the engine and the exporters (``r2b.models.spec``)."""

from r2b.models import resnet as _resnet  # noqa: F401  (registers the builders)
from r2b.models.registry import (
    DEFAULT_INPUT_SIZE,
    STAGES,
    STEMS,
    create_model,
    default_input_size,
    input_size_problem,
    is_binary_family,
    list_models,
    model_from_arch,
    register_model,
)

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "STAGES",
    "STEMS",
    "create_model",
    "default_input_size",
    "input_size_problem",
    "is_binary_family",
    "list_models",
    "model_from_arch",
    "register_model",
]

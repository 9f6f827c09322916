"""Models: the real ResNet-18 teacher and the binary ResNet-18 families (strong baseline,
Real-to-Binary, Bi-Real Net, ReActNet), through a registry that owns the model facts (families,
stems, stages, input sizes); ``model.spec()`` describes a binary network to the engine and the
exporters (``r2b.models.spec``)."""

from r2b.models import resnet as _resnet  # noqa: F401  (registers the builders)
from r2b.models.registry import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_STEM,
    STAGES,
    STEMS,
    StemDesign,
    create_model,
    default_input_size,
    input_size_problem,
    is_binary_family,
    list_models,
    list_stems,
    model_from_arch,
    register_model,
    register_stem,
    stem_design,
    temporary_registrations,
    unregister_model,
    unregister_stem,
)

__all__ = [
    "DEFAULT_INPUT_SIZE",
    "DEFAULT_STEM",
    "STAGES",
    "STEMS",
    "StemDesign",
    "create_model",
    "default_input_size",
    "input_size_problem",
    "is_binary_family",
    "list_models",
    "list_stems",
    "model_from_arch",
    "register_model",
    "register_stem",
    "stem_design",
    "temporary_registrations",
    "unregister_model",
    "unregister_stem",
]

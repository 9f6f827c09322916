"""r2b: binary neural networks with Real-to-Binary convolutions (Martinez et al., ICLR 2020)."""

from r2b.models import create_model, list_models

__all__ = ["create_model", "list_models"]
__version__ = "0.1.0"

"""CED audio transformers: exact published models, checkpoints and HEAR 2021 plugins.

The model classes load on first use, so that the torch-free parts (tagging
with an exported graph, ``hear_ced.runtime``) never import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hear_ced.model import CED, VARIANTS, CEDConfig, build_model, variant_config

__all__ = ["CED", "CEDConfig", "VARIANTS", "build_model", "variant_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from hear_ced import model

        return getattr(model, name)
    raise AttributeError(f"module 'hear_ced' has no attribute {name!r}")

"""CED audio transformers: exact published models, checkpoints and HEAR 2021 plugins."""

from hear_ced.model import CED, VARIANTS, CEDConfig, build_model, variant_config

__all__ = ["CED", "CEDConfig", "VARIANTS", "build_model", "variant_config"]
__version__ = "0.1.0"

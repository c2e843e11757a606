"""HEAR 2021 plugin: CED-Mini. `python -m heareval.embeddings.runner hear_ced.mini`."""

from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings, loader

load_model = loader("mini")
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

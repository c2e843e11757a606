"""HEAR 2021 plugin: CED-Base. `python -m heareval.embeddings.runner hear_ced.base`."""

from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings, loader

load_model = loader("base")
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

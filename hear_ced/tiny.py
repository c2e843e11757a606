"""HEAR 2021 plugin: CED-Tiny. `python -m heareval.embeddings.runner hear_ced.tiny`."""

from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings, loader

load_model = loader("tiny")
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

"""HEAR 2021 plugin: CED-Small. `python -m heareval.embeddings.runner hear_ced.small`."""

from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings, loader

load_model = loader("small")
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

"""HEAR 2021 plugin for a CED of any size, taken from the checkpoint file.

For students and teachers of custom sizes; needs ``model_file_path``.
"""

from hear_ced.hear import get_scene_embeddings, get_timestamp_embeddings, loader

load_model = loader(None)
__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings"]

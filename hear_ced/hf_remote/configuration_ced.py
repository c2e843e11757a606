"""The configuration of a CED audio tagger exported by hear-ced, for transformers' remote code.

The keys are those of the published ``mispeech/ced-*`` configurations, so
either model code reads the folder. ``pass_spans`` is the one cut of a clip's
log-mel frames into transformer passes, shared by the feature extractor (each
pass gets its own 120 dB floor) and the model (each pass runs on its own).
This folder needs torch, numpy and transformers only.
"""

from transformers import PretrainedConfig


def pass_spans(n_frames: int, target_length: int, patch_size: int) -> list[tuple[int, int]]:
    """Frame ranges of the passes over ``n_frames``: full passes of ``target_length``
    frames, then the remainder if it holds a patch."""
    starts = range(0, n_frames, target_length)
    spans = [(start, min(start + target_length, n_frames)) for start in starts]
    return [(start, end) for start, end in spans if end - start >= patch_size]


class CedConfig(PretrainedConfig):
    """Sizes of a CED (a ViT over 16x16 log-mel patches) and its class names."""

    model_type = "ced"

    def __init__(
        self,
        name: str = "ced-custom",
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        patch_size: int = 16,
        patch_stride: int = 16,
        n_mels: int = 64,
        target_length: int = 1012,
        outputdim: int = 527,
        pooling: str = "mean",
        eval_avg: str = "mean",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **kwargs,
    ) -> None:
        if "id2label" not in kwargs:
            kwargs.setdefault("num_labels", outputdim)
        # Each output is a class probability of its own (a sigmoid, not a softmax).
        kwargs.setdefault("problem_type", "multi_label_classification")
        super().__init__(**kwargs)
        self.name = name
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.n_mels = n_mels
        self.target_length = target_length
        self.outputdim = outputdim
        self.pooling = pooling
        self.eval_avg = eval_avg
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate

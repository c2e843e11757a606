"""CED audio transformers exported by hear-ced, for transformers' remote code.

A pre-norm ViT over 16x16 patches of the log-mel (``feature_extraction_ced``),
under the published ``mispeech/ced-*`` weight names. A clip of any length is
cut into passes of at most ``target_length`` frames (10.11 s); each pass runs
on its own, never mixed with other clips, so a clip's result does not depend
on its batch mates or their padding (``attention_mask``).

* ``CedForAudioClassification``: each pass's mean token through the head,
  the passes' sigmoid probabilities averaged weighted by their time patches
  (hear-ced's one prediction rule); ``logits`` are the logits of those
  averages, so a sigmoid of them gives the clip's class probabilities.
* ``CedModel``: ``pooler_output`` is the clip's scene embedding, the mean of
  all its final-norm tokens with the log-mel floored 120 dB below the clip's
  peak (the HEAR embedding of hear-ced); ``last_hidden_state`` holds one
  vector per time patch (its frequency tokens averaged), zero past a clip's end.

The training-time parts of CED (stochastic depth) are left out: this code
runs trained models.
"""

from collections import defaultdict

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .configuration_ced import CedConfig, pass_spans

TOP_DB = 120.0


class CedAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        heads = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mixed = nn.functional.scaled_dot_product_attention(*heads)
        return self.proj(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class CedMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class CedBlock(nn.Module):
    def __init__(self, config: CedConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CedAttention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = CedMlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CedPatchEmbed(nn.Module):
    def __init__(self, config: CedConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, config.embed_dim, config.patch_size, config.patch_stride)


class CedPreTrainedModel(PreTrainedModel):
    config_class = CedConfig
    base_model_prefix = "encoder"
    main_input_name = "input_values"


class CedModel(CedPreTrainedModel):
    # the classification head of the folder's weights, which the encoder alone does not use
    _keys_to_ignore_on_load_unexpected = [r"^outputlayer\."]

    def __init__(self, config: CedConfig) -> None:
        super().__init__(config)
        dim, patch = config.embed_dim, config.patch_size
        self.init_bn = nn.BatchNorm1d(config.n_mels, momentum=0.01)
        self.patch_embed = CedPatchEmbed(config)
        self.time_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, config.target_length // patch))
        self.freq_pos_embed = nn.Parameter(torch.zeros(1, dim, config.n_mels // patch, 1))
        self.blocks = nn.ModuleList(CedBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.post_init()

    def pass_tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mels (N, mels, frames) of one pass each -> final-norm tokens (N, F', T', D)."""
        x = self.patch_embed.proj(self.init_bn(mel).unsqueeze(1))
        x = x + self.time_pos_embed[..., : x.shape[-1]] + self.freq_pos_embed
        n, dim, freq, time = x.shape
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.norm(x).reshape(n, freq, time, dim)

    def passes(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None, clip_floor: bool
    ) -> list[tuple[int, torch.Tensor]]:
        """(clip, tokens (F', T', D)) of every pass of every clip, each clip's in time order.

        Passes of one length, from any clips, run stacked. ``clip_floor`` floors
        each clip's log-mel 120 dB below its own peak first (the embedding's
        features; each pass already has its own floor from the feature extractor).
        """
        lengths = (
            attention_mask.sum(-1).tolist()
            if attention_mask is not None
            else [input_values.shape[1]] * len(input_values)
        )
        cut = []
        for clip, frames in enumerate(lengths):
            mel = input_values[clip, :frames].transpose(0, 1)
            if clip_floor:
                mel = torch.maximum(mel, mel.max() - TOP_DB)
            spans = pass_spans(frames, self.config.target_length, self.config.patch_size)
            cut += [(clip, mel[:, start:end]) for start, end in spans]
        by_length = defaultdict(list)
        for index, (_, mel) in enumerate(cut):
            by_length[mel.shape[-1]].append(index)
        tokens = [None] * len(cut)
        for indices in by_length.values():
            stacked = self.pass_tokens(torch.stack([cut[i][1] for i in indices]))
            for i, result in zip(indices, stacked, strict=True):
                tokens[i] = result
        return [(clip, result) for (clip, _), result in zip(cut, tokens, strict=True)]

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        per_clip = defaultdict(list)
        for clip, tokens in self.passes(input_values, attention_mask, clip_floor=True):
            per_clip[clip].append(tokens.mean(0))
        vectors = [torch.cat(per_clip[clip]) for clip in range(len(input_values))]
        hidden = nn.utils.rnn.pad_sequence(vectors, batch_first=True)
        pooled = torch.stack([v.mean(0) for v in vectors])
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class CedForAudioClassification(CedPreTrainedModel):
    def __init__(self, config: CedConfig) -> None:
        super().__init__(config)
        self.encoder = CedModel(config)
        self.outputlayer = nn.Sequential(
            nn.LayerNorm(config.embed_dim), nn.Linear(config.embed_dim, config.outputdim)
        )
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        passes = self.encoder.passes(input_values, attention_mask, clip_floor=False)
        clips = torch.tensor([clip for clip, _ in passes], device=input_values.device)
        weights = torch.tensor(
            [tokens.shape[1] for _, tokens in passes], device=input_values.device
        ).double()
        pass_logits = self.outputlayer(torch.stack([tokens.mean((0, 1)) for _, tokens in passes]))
        probs = torch.sigmoid(pass_logits.double()) * weights[:, None]
        sums = probs.new_zeros(len(input_values), probs.shape[1]).index_add(0, clips, probs)
        totals = weights.new_zeros(len(input_values)).index_add(0, clips, weights)
        logits = torch.logit(sums / totals[:, None], eps=1e-15).to(pass_logits.dtype)
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)

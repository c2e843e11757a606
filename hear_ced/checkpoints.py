"""Reading and writing CED weights without unpickling code.

Three layouts are recognised from their keys:

* ``original``: the published CED ``.pt`` files, a state dict (sometimes
  wrapped as ``{"model": ...}``) with ``front_end.*`` constants and
  ``init_bn.1.*``;
* ``huggingface``: the ``mispeech/ced-*`` ports (``model.safetensors`` or
  ``pytorch_model.bin``), where every key but ``outputlayer.*`` sits under
  ``encoder.`` and the BatchNorm is ``init_bn.*``; a folder's ``config.json``
  (the transformers ``CedConfig``) gives the head count, input length and
  class names. ``save_huggingface`` writes this layout, for sharing a model
  on the Hugging Face Hub;
* ``native``: this project's format, one ``.safetensors`` file whose header
  metadata holds the model config (class names included) as JSON.

Pickle-based files are read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hear_ced import frontend
from hear_ced.common.files import atomic_path, read_json, write_json
from hear_ced.frontend import mel_filterbank
from hear_ced.labels import class_names
from hear_ced.model import CED, PUBLISHED_SIZES, VARIANTS, CEDConfig, variant_config
from hear_ced.weights import HUB_FILES

log = logging.getLogger(__name__)

FORMAT_NAME = "hear-ced"
FORMAT_VERSION = 1
HF_CONFIG_FILE = "config.json"
HF_FEATURES_FILE = "preprocessor_config.json"
_HF_ENCODER_PREFIX = "encoder."
_HF_HEAD_PREFIX = "outputlayer."
# This package's own transformers code (``trust_remote_code``), copied into every export.
HF_CODE_FOLDER = Path(__file__).with_name("hf_remote")
HF_CODE_FILES = ("configuration_ced.py", "modeling_ced.py", "feature_extraction_ced.py")
_NON_WEIGHT_PREFIX = "front_end."
_HEADS_BY_WIDTH = {cfg.embed_dim: cfg.num_heads for cfg in VARIANTS.values()}
# The front-end keys that config.json and preprocessor_config.json share.
_HF_FRONTEND = {
    "n_fft": frontend.N_FFT,
    "win_size": frontend.N_FFT,
    "hop_size": frontend.HOP_LENGTH,
    "f_min": frontend.F_MIN,
    "f_max": frontend.F_MAX,
    "center": True,
}
_HF_FEATURE_EXTRACTOR = "feature_extraction_ced.CedFeatureExtractor"


class CheckpointError(ValueError):
    """A checkpoint that cannot be turned into the requested model."""


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weights file plus any safetensors metadata."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects other than tensors, "
            f"and unpickling them could run arbitrary code ({exc})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}"
        ) from exc
    return _unwrap(loaded, path), {}


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping):
                loaded = inner
                break
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path} holds no state dict of tensors")


def to_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any known layout under this package's state-dict names: the one place layouts are mapped.

    The Hugging Face ``encoder.`` prefix goes, the original ``init_bn.1.``
    becomes ``init_bn.`` and its frontend constants (``front_end.*``) are
    dropped. An original file's stored filterbank is checked on the way, so a
    checkpoint trained on other features than ours is reported.
    """
    stored = state.get("front_end.0.mel_scale.fb")
    ours = mel_filterbank()
    if stored is not None and (
        stored.shape != ours.shape or not torch.allclose(stored.float(), ours, atol=1e-6)
    ):
        log.warning(
            "the checkpoint's stored mel filterbank differs from the CED frontend; "
            "its outputs will not match the model it came from"
        )
    native = {}
    for key, value in state.items():
        key = key.removeprefix(_HF_ENCODER_PREFIX)
        if not key.startswith(_NON_WEIGHT_PREFIX):
            native[key.replace("init_bn.1.", "init_bn.", 1)] = value
    if "patch_embed.proj.weight" not in native:
        raise CheckpointError(
            "unrecognised checkpoint layout: no 'patch_embed.proj.weight' (native/original) "
            "or 'encoder.patch_embed.proj.weight' (Hugging Face) key"
        )
    return native


def infer_config(state: Mapping[str, torch.Tensor]) -> CEDConfig:
    """Model sizes from native-named weights (heads from the published widths)."""
    try:
        weight = state["patch_embed.proj.weight"]
        embed_dim, _, patch, _ = weight.shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        num_classes = state["outputlayer.1.weight"].shape[0]
        freq_patches = state["freq_pos_embed"].shape[2]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot infer model sizes, missing key {exc}") from exc
    return CEDConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=_HEADS_BY_WIDTH.get(embed_dim, max(1, embed_dim // 64)),
        mlp_ratio=hidden / embed_dim,
        num_classes=num_classes,
        n_mels=freq_patches * patch,
        patch_size=patch,
    )


def fit_time_positions(state: dict[str, torch.Tensor], positions: int) -> None:
    """Truncate or linearly interpolate a time embedding to ``positions``."""
    pos = state.get("time_pos_embed")
    if pos is None or pos.ndim != 4 or pos.shape[-1] == positions:
        return
    if pos.shape[-1] > positions:
        state["time_pos_embed"] = pos[..., :positions].clone()
    else:
        state["time_pos_embed"] = F.interpolate(
            pos.float(), size=(1, positions), mode="bilinear", align_corners=False
        ).to(pos.dtype)


# Keys every CED and its MAE pre-training have; separate time and frequency
# position embeddings set the family apart from a plain ViT or AST.
_CED_KEYS = ("time_pos_embed", "freq_pos_embed", "patch_embed.proj.weight")


def _listed(keys: Sequence[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_partial(
    model: CED,
    state: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    drop: Sequence[str] = (),
    strict: bool = False,
    logger: logging.Logger | None = log,
    dropped_because: str = "as asked",
) -> None:
    """Copy what fits of a CED-family checkpoint (any layout) into ``model``: every start from weights.

    A time-position embedding of another length is truncated or interpolated;
    keys starting with one of ``drop`` are left out (noted as dropped
    ``dropped_because``); tensors of
    another shape, keys the model lacks and the model's keys the checkpoint
    lacks are left out, each kind with a warning of ``logger`` naming
    ``source`` (None: silent; what was dropped or fitted is noted at info
    level). Refused with a CheckpointError naming ``source``: a checkpoint of
    another family, one of which no transformer block fits (a silently random
    model would waste the run) and, with ``strict``, any tensor left out other
    than those dropped on request.
    """
    try:
        native = to_native(state)
    except CheckpointError as err:
        raise CheckpointError(f"{source} is not a CED-family checkpoint: {err}") from err
    absent = [key for key in _CED_KEYS if key not in native]
    if absent:
        raise CheckpointError(
            f"{source} is not a CED-family checkpoint: it lacks {', '.join(absent)}"
        )
    stored_positions = native["time_pos_embed"].shape[-1]
    fit_time_positions(native, model.config.time_positions)
    dropped = sorted(k for k in native if k.startswith(tuple(drop)))
    native = {k: v for k, v in native.items() if k not in dropped}
    expected = model.state_dict()
    # key -> "key (checkpoint shape, model shape)"; the model keeps its initial value
    other_shape = {
        key: f"{key} (checkpoint {tuple(native[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(native.keys() & expected.keys())
        if native[key].shape != expected[key].shape
    }
    fitting = {k: v for k, v in native.items() if k in expected and k not in other_shape}
    missing = sorted(k for k in expected if k not in native and not k.startswith(tuple(drop)))
    not_in_model = sorted(native.keys() - expected.keys())  # e.g. an MAE decoder
    problems = []
    if other_shape:
        problems.append(
            f"{len(other_shape)} tensor(s) of another shape left at their initial values: "
            + _listed(list(other_shape.values()))
        )
    if missing:
        problems.append(
            f"{len(missing)} of the model's tensor(s) missing, left at their initial "
            f"values: {_listed(missing)}"
        )
    if not_in_model:
        problems.append(
            f"{len(not_in_model)} tensor(s) not in this model, ignored: " + _listed(not_in_model)
        )
    if strict and problems:
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(problems))
    if not any(k.startswith("blocks.") for k in fitting):
        raise CheckpointError(
            f"{source} loads no transformer weight into the model: it is "
            f"{_describe_state(native)}, the model {describe(model.config)}; "
            f"{len(other_shape)} tensor(s) of another shape "
            f"({'; '.join(list(other_shape.values())[:3])}), {len(missing)} of the model's missing"
        )
    model.load_state_dict(fitting, strict=False)
    if logger is None:
        return
    for problem in problems:
        logger.warning("%s: %s", source, problem)
    if dropped:
        logger.info("%s: dropped %s: %s", source, dropped_because, _listed(dropped))
    if stored_positions != model.config.time_positions:
        logger.info(
            "%s: time position embedding fitted from %d to %d positions",
            source,
            stored_positions,
            model.config.time_positions,
        )


def _describe_state(native: Mapping[str, torch.Tensor]) -> str:
    try:
        return describe(infer_config(native))
    except CheckpointError:
        return "a CED checkpoint of unknown size"


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CEDConfig]:
    """Native-named tensors (``to_native``) and model config (with the class names, if
    stored) of a file or folder."""
    path = Path(path)
    hf_config = None
    if path.is_dir():
        weights = _weights_in_folder(path)
        if (path / HF_CONFIG_FILE).is_file():
            hf_config = read_json(path / HF_CONFIG_FILE)
        path = weights
    stored, metadata = read_tensors(path)
    try:
        state = to_native(stored)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    if FORMAT_NAME in metadata:
        info = json.loads(metadata[FORMAT_NAME])
        return state, CEDConfig.from_dict(info["config"])
    config = infer_config(state)
    if hf_config is None:
        return state, config
    return state, _apply_hf_config(config, hf_config, path.parent / HF_CONFIG_FILE)


# config.json keys that the weights also determine: a contradiction is an error.
_HF_SIZES = {
    "embed_dim": "embed_dim",
    "depth": "depth",
    "outputdim": "num_classes",
    "patch_size": "patch_size",
    "n_mels": "n_mels",
}


def _apply_hf_config(inferred: CEDConfig, values: object, source: Path) -> CEDConfig:
    """The weights' sizes completed by a ``CedConfig`` JSON: heads, input length, names."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{source} holds no JSON object")
    if values.get("model_type", "ced") != "ced":
        raise CheckpointError(f"{source} is for model_type {values['model_type']!r}, not a CED")
    for key, field in _HF_SIZES.items():
        if key in values and values[key] != getattr(inferred, field):
            raise CheckpointError(
                f"{source} gives {key} {values[key]!r}, but the weights are for "
                f"{getattr(inferred, field)}"
            )
    if values.get("patch_stride", inferred.patch_size) != inferred.patch_size:
        raise CheckpointError(
            f"{source} gives patch_stride {values['patch_stride']!r}: overlapping patches "
            "are not supported"
        )
    completed = {
        key: values[key]
        for key in ("num_heads", "target_length", "drop_path_rate")
        if values.get(key) is not None
    }
    labels = _labels_from_id2label(values.get("id2label"), inferred.num_classes, source)
    try:
        return dataclasses.replace(inferred, **completed, labels=labels)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: {exc}") from exc


def _labels_from_id2label(id2label: object, num_classes: int, source: Path) -> list[str] | None:
    """Class names in output order, or None (with a warning) if they do not fit the model."""
    if id2label is None:
        return None
    try:
        names = {int(index): name for index, name in dict(id2label).items()}
    except (TypeError, ValueError):
        names = {}
    if sorted(names) != list(range(num_classes)) or not all(
        isinstance(name, str) for name in names.values()
    ):
        log.warning(
            "%s: id2label does not name the model's %d outputs 0..%d; ignoring it",
            source,
            num_classes,
            num_classes - 1,
        )
        return None
    return [names[i] for i in range(num_classes)]


def _weights_in_folder(folder: Path) -> Path:
    for name in HUB_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder} is not a CED model folder (a hear-ced export or a mispeech/ced-* "
        f"download): it holds none of {', '.join(HUB_FILES)}"
    )


def describe(config: CEDConfig) -> str:
    for name, known in VARIANTS.items():
        if (known.embed_dim, known.depth) == (config.embed_dim, config.depth):
            return f"CED-{name} (embed {config.embed_dim}, depth {config.depth})"
    return f"a custom CED (embed {config.embed_dim}, depth {config.depth})"


def load_model_file(path: str | os.PathLike, variant: str | None = None) -> CED:
    """Build the model a checkpoint describes and load it, in eval mode.

    ``variant`` (``tiny`` ... ``base``) makes a checkpoint of another size an
    error instead of a silently different model.
    """
    state, config = read_checkpoint(path)
    if variant is not None:
        wanted = variant_config(variant)
        if (wanted.embed_dim, wanted.depth) != (config.embed_dim, config.depth):
            raise CheckpointError(
                f"{path} is {describe(config)}, not the requested CED-{variant} "
                f"(embed {wanted.embed_dim}, depth {wanted.depth})"
            )
    model = CED(config, initialize=False)
    load_partial(model, state, source=str(path), strict=True)
    return model.eval()


def save_model(model: CED, path: str | os.PathLike, labels: list[str] | None = None) -> Path:
    """Write ``model`` in the native format, atomically; ``labels`` replace the config's names.

    The file describes the model as built: a fast copy's mode is not stored.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"native checkpoints end in .safetensors, got {path.name}")
    config = dataclasses.replace(model.config, fast_mode=None)
    if labels is not None:
        config = dataclasses.replace(config, labels=labels)
    info = {"format_version": FORMAT_VERSION, "config": config.to_dict()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT_NAME: json.dumps(info)})
    return path


def weights_sha256(model: CED) -> str:
    """The identity of a model in memory: sha256 of its config and of every state-dict entry.

    Each entry contributes its name, dtype, shape and bytes, so a model with
    no file (a teacher built in memory, a fast copy's source) is named by
    what it computes with.
    """
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def huggingface_state(model: CED) -> dict[str, torch.Tensor]:
    """``model``'s weights under the ``mispeech/ced-*`` key names (``encoder.`` but the head)."""
    return {
        (key if key.startswith(_HF_HEAD_PREFIX) else _HF_ENCODER_PREFIX + key): (
            value.detach().cpu().contiguous()
        )
        for key, value in model.state_dict().items()
    }


def _published_name(config: CEDConfig) -> str:
    """``ced-SIZE`` for a published size, else ``ced-custom``.

    The published ``CedConfig`` replaces the width and head count of the four
    ``ced-SIZE`` names with the published ones, and its model code requires a
    name starting with ``ced``: a model of any other size must not carry one
    of the four.
    """
    for size in PUBLISHED_SIZES:
        sizes = dataclasses.replace(
            config, num_classes=527, drop_path_rate=0.0, labels=None, fast_mode=None
        )
        if sizes == VARIANTS[size]:
            return f"ced-{size}"
    return "ced-custom"


def huggingface_config(config: CEDConfig, labels: list[str]) -> dict:
    """``config.json`` for ``CedForAudioClassification``, with the class names.

    ``auto_map`` names the code files ``save_huggingface`` copies beside it,
    so transformers loads the folder with ``trust_remote_code`` and no network.
    """
    return {
        "architectures": ["CedForAudioClassification"],
        "auto_map": {
            "AutoConfig": "configuration_ced.CedConfig",
            "AutoModel": "modeling_ced.CedModel",
            "AutoModelForAudioClassification": "modeling_ced.CedForAudioClassification",
            "AutoFeatureExtractor": _HF_FEATURE_EXTRACTOR,
        },
        "model_type": "ced",
        # Each output is a class probability of its own: pipelines apply a sigmoid.
        "problem_type": "multi_label_classification",
        "name": _published_name(config),
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": True,
        "patch_size": config.patch_size,
        "patch_stride": config.patch_size,
        "n_mels": config.n_mels,
        "target_length": config.target_length,
        "outputdim": config.num_classes,
        "pooling": "mean",
        "eval_avg": "mean",
        "drop_rate": 0.0,
        "attn_drop_rate": 0.0,
        "drop_path_rate": config.drop_path_rate,
        **_HF_FRONTEND,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "torch_dtype": "float32",
    }


def save_huggingface(model: CED, folder: str | os.PathLike, force: bool = False) -> Path:
    """Write ``model`` as a ``mispeech/ced-*`` style folder, each file atomically.

    The folder (``model.safetensors``, ``config.json``,
    ``preprocessor_config.json`` and the transformers code of
    ``HF_CODE_FILES``) can be uploaded to the Hugging Face Hub as it is. A
    folder that already holds files is refused unless ``force``, which
    replaces these files and leaves any others.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if present and not force:
        shown = ", ".join(present[:5]) + (" ..." if len(present) > 5 else "")
        raise FileExistsError(
            f"{folder} is not empty ({shown}); choose a new or empty folder, or force "
            "the overwrite (--force)"
        )
    # One unique name per output: label2id maps each name to one output.
    names = class_names(model.config.labels, model.config.num_classes)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CheckpointError(
            f"class names must be unique (label2id maps each to one output); "
            f"repeated: {', '.join(repeated[:8])}"
        )
    with atomic_path(folder / HUB_FILES[0]) as tmp:
        save_file(huggingface_state(model), str(tmp), metadata={"format": "pt"})
    for name in HF_CODE_FILES:
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(HF_CODE_FOLDER / name, tmp)
    features = {
        "feature_extractor_type": "CedFeatureExtractor",
        "auto_map": {"AutoFeatureExtractor": _HF_FEATURE_EXTRACTOR},
        "sampling_rate": frontend.SAMPLE_RATE,
        "feature_size": model.config.n_mels,
        **_HF_FRONTEND,
        # the passes the features are floored by, as the model cuts them
        "target_length": model.config.target_length,
        "patch_size": model.config.patch_size,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": True,
    }
    write_json(folder / HF_FEATURES_FILE, features)
    write_json(folder / HF_CONFIG_FILE, huggingface_config(model.config, names))
    return folder

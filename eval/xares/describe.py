"""``python -m hear_ced.eval.xares.describe OUT ENCODER_PY TASK_PY...``: what X-ARES makes of them.

Runs in a child process under the shims (X-ARES's task files import its
whole package). Builds the encoder as X-ARES does, runs X-ARES's own
``check_audio_encoder`` on it, builds every task's config and writes what the
run needs to check before encoding (splits, tar patterns, metric, segment
length) as JSON to OUT. A task whose config cannot be built is described by
its error; the others are still described.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hear_ced.common.files import write_json


def _plain(value):
    """JSON-safe copy of config values (callables and tensors become None)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None


def describe_task(task_py: str, encoder) -> dict:
    from xares.utils import attr_from_py_path

    config = attr_from_py_path(task_py, endswith="_config")(encoder)
    return {
        "name": config.name,
        "formal_name": config.formal_name,
        "task_type": config.task_type,
        "disabled": config.disabled,
        "private": config.private,
        "zenodo_id": config.zenodo_id,
        "audio_tars": {str(k): v for k, v in config.audio_tar_name_of_split.items()},
        "encoded_tars": {str(k): v for k, v in config.encoded_tar_name_of_split.items()},
        "metric": config.metric,
        "metric_args": _plain(config.metric_args),
        "eval_weight": config.eval_weight,
        "do_knn": config.do_knn,
        "crop_length": config.crop_length,
        "epochs": config.epochs,
    }


def describe(encoder_py: str, task_pys: list[str]) -> dict:
    from xares.audio_encoder_checker import check_audio_encoder
    from xares.utils import attr_from_py_path

    encoder = attr_from_py_path(encoder_py, endswith="Encoder")()
    found = {
        "encoder": {
            "class": type(encoder).__name__,
            "sampling_rate": encoder.sampling_rate,
            "output_dim": encoder.output_dim,
            "hop_size_in_ms": encoder.hop_size_in_ms,
            "check_audio_encoder": bool(check_audio_encoder(encoder)),
        },
        "tasks": {},
    }
    for task_py in task_pys:
        try:
            found["tasks"][task_py] = describe_task(task_py, encoder)
        except Exception as exc:  # a broken task file fails its task only
            found["tasks"][task_py] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


if __name__ == "__main__":
    out, encoder_py, *task_pys = sys.argv[1:]
    write_json(Path(out), describe(encoder_py, task_pys))

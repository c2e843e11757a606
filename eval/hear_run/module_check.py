"""The module follows the HEAR API: hearvalidator's checks, in a child process.

The child loads the module as heareval will (same weights, same
``--model-options``), runs hearvalidator on it and writes what the run needs
to know into ``module.json``: sample rate, embedding sizes, the device
heareval will embed on and the embedding method. Loading it in a child keeps
the model's memory and any import side effects out of the run's process.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from hear_ced.common.files import write_json
from hear_ced.eval.hear_run.settings import RunError, TaskError
from hear_ced.eval.hear_run.task_state import run_logged


def describe_module(
    module: str, model: str | None, options: dict, out: Path, environment: dict | None = None
) -> dict:
    """Check the module in a child process (``environment``: the first job's); its record."""
    info_path = out / "module.json"
    command = [sys.executable, "-m", "hear_ced.eval.hear_run.module_check",
               module, model or "", json.dumps(options), str(info_path)]  # fmt: skip
    try:
        run_logged(command, out / "logs" / "module-check.log", out, environment)
    except TaskError as exc:
        raise RunError(f"module {module} does not work as a HEAR module: {exc}") from exc
    return json.loads(info_path.read_text())


def device_name() -> str:
    """Where heareval embeds: it picks CUDA whenever torch sees a GPU."""
    import torch

    return f"cuda: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


def gpu_problem() -> str | None:
    """What would stop heareval on this machine before any work is done."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("pynvml") is None:
        return (
            "heareval measures GPU memory with pynvml, which is not installed: "
            "pip install nvidia-ml-py (part of the heareval extra)"
        )
    return None


def check_module(module_name: str, model: str, options: dict) -> dict:
    """hearvalidator's API checks on the loaded module; the facts ``module.json`` records."""
    from hear_ced.eval import compat

    compat.install()  # before hearvalidator, whose TensorFlow import it defers
    from hearvalidator.validate import ValidateModel

    problem = gpu_problem()
    if problem:
        raise RuntimeError(problem)

    class Validator(ValidateModel):
        def import_model(self) -> None:
            """The module, its ``load_model`` given the run's model options."""
            super().import_model()
            if options:
                module, load = self.module, self.module.load_model

                def load_model(*args):
                    try:
                        return load(*args, **options)
                    except (TypeError, ValueError) as exc:
                        raise ValueError(
                            f"load_model() of {module.__name__} does not accept the model "
                            f"options {json.dumps(options)}: {exc}"
                        ) from exc

                self.module = SimpleNamespace(**{**vars(module), "load_model": load_model})

        def check_load_model(self) -> None:
            """hearvalidator's, except that a torch model is taken as one without asking
            TensorFlow first (``isinstance(model, tf.Module)`` would load it for nothing)."""
            import torch

            load = getattr(self.module, "load_model", None)
            if load is None:
                return super().check_load_model()  # its error names the missing function
            self.model = load(self.model_file_path) if self.model_file_path else load()
            if not isinstance(self.model, torch.nn.Module):
                return super().check_load_model()  # loads it again, for TensorFlow's check
            self.model_type = "torch"
            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            self.model.to(self.device)

    validator = Validator(module_name, model or None)
    validator()
    loaded = validator.model
    return {
        "module": module_name,
        "model": model or None,
        "model_options": options,
        "sample_rate": loaded.sample_rate,
        "scene_embedding_size": loaded.scene_embedding_size,
        "timestamp_embedding_size": loaded.timestamp_embedding_size,
        "ced_size": ced_size(loaded),
        "embedding_method": getattr(loaded, "embedding_method", "default"),
        "device": device_name(),
    }


def ced_size(loaded) -> str | None:
    """tiny/mini/small/base when the loaded model is a CED of a published size."""
    from hear_ced.model import PUBLISHED_SIZES, VARIANTS

    config = getattr(getattr(loaded, "model", None), "config", None)
    shape = tuple(getattr(config, key, None) for key in ("embed_dim", "depth", "num_heads"))
    for size in PUBLISHED_SIZES:
        variant = VARIANTS[size]
        if shape == (variant.embed_dim, variant.depth, variant.num_heads):
            return size
    return None


def main(argv: list[str]) -> int | str:
    """Child side of :func:`describe_module`: MODULE MODEL_OR_EMPTY OPTIONS_JSON INFO_JSON."""
    module_name, model, options, info_path = argv
    try:
        info = check_module(module_name, model, json.loads(options))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # hearvalidator's ModelError is a BaseException
        message = " ".join(str(exc).split())  # one line: the run names it as the cause
        return f"{type(exc).__name__}: {message}"  # sys.exit prints it to stderr, exit status 1
    write_json(Path(info_path), info)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

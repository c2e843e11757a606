"""The install layout, checked: what each module imports is declared where its users install it.

``install_requires`` is the torch-free core and each extra adds what one use
needs (README, *Install*). Two checks keep that true: every third-party import
of a module is in the core or in the extras its module is installed with
(read from setup.cfg), and the HEAR modules and the torch tagging CLI, run in
a fresh interpreter, load nothing from the extras they are not installed with.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from hear_ced.checkpoints import save_model
from hear_ced.model import build_model

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ced_common", "hear_ced", "distill", "eval")
SELF = "hear-ced"

# The extras a module is installed with, besides the core: the first match of
# the module's name (a module, then its packages) wins. The core modules
# (empty tuple) run without torch.
MODULE_EXTRAS: dict[str, tuple[str, ...]] = {
    "ced_common": (),
    "ced_common.config": ("train",),  # its loaders serve ced-distill's configs
    "hear_ced": ("torch",),
    "hear_ced.audio": (),
    "hear_ced.cli": (),
    "hear_ced.labels": (),
    "hear_ced.tags": (),
    "hear_ced.export": ("onnx",),
    "hear_ced.timeline": ("torch", "plot"),
    "distill": ("train",),
    "eval": ("eval",),
    # the programs of hear-eval-kit and X-ARES that ced-eval drives
    "eval.compat": ("eval", "heareval"),
    "eval.probe": ("eval", "heareval"),
    "eval.hear_run.heareval_steps": ("eval", "heareval"),
    "eval.hear_run.module_check": ("eval", "heareval"),
    "eval.hear_run.shared_audio": ("eval", "heareval"),
    "eval.xares.describe": ("eval", "xares"),
}

# Import names whose distribution is named otherwise.
DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "slugify": "python-slugify",
    "tensorflow": "tensorflow-cpu",
    "ignite": "pytorch-ignite",
    "pynvml": "nvidia-ml-py",
}

# Modules that come with a declared distribution: hear_ced.weights catches the
# transport errors of huggingface_hub's HTTP client.
PROVIDED_BY = {"httpx2": "huggingface_hub"}

# Declared for the tools or the install itself; no project process imports them.
NEVER_IMPORTED = {"setuptools", "pytest", "ruff"}

# Installed with --no-deps beside an extra (the Makefile's HEAR_KIT and XARES),
# because their own pins cannot be met; the extra brings their dependencies.
BESIDE_EXTRA = {
    "heareval": "heareval",
    "hearvalidator": "heareval",
    "hearbaseline": "heareval",
    "xares": "xares",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def _requirements(text: str) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    """The core's distributions and each extra's, with ``hear-ced[...]`` references expanded."""
    config = _setup()
    core = {_canonical(r.name) for r in _requirements(config["options"]["install_requires"])}
    raw = {extra: _requirements(text) for extra, text in config["options.extras_require"].items()}

    def expand(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
        assert extra not in seen, f"extra {extra} refers to itself"
        names = set()
        for req in raw[extra]:
            if _canonical(req.name) == SELF:
                for inner in req.extras:
                    names |= expand(inner, seen | {extra})
            else:
                names.add(_canonical(req.name))
        return names

    return core, {extra: expand(extra) for extra in raw}


CORE, EXTRAS = _declared()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _extras_of(module: str) -> tuple[str, ...]:
    name = module
    while name not in MODULE_EXTRAS:
        name = name.rpartition(".")[0]
    return MODULE_EXTRAS[name]


def _third_party(tree: ast.Module) -> set[str]:
    """Top-level names of the non-project, non-stdlib modules imported anywhere but TYPE_CHECKING."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    tops = {name.split(".")[0] for name in names}
    return {n for n in tops if n not in sys.stdlib_module_names and n not in PACKAGES}


SOURCES = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_extras_of_names_only_real_modules_and_extras():
    modules = {_module_name(path) for path in SOURCES}
    assert set(MODULE_EXTRAS) <= modules
    named = {extra for extras in MODULE_EXTRAS.values() for extra in extras}
    assert named | set(BESIDE_EXTRA.values()) <= set(EXTRAS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_declared(path):
    """Each third-party import is in the core or an extra the module is installed with."""
    module = _module_name(path)
    extras = _extras_of(module)
    available = CORE.union(*(EXTRAS[extra] for extra in extras))
    missing = []
    for name in sorted(_third_party(ast.parse(path.read_text(), str(path)))):
        if BESIDE_EXTRA.get(name) in extras:
            continue
        distribution = DISTRIBUTIONS.get(name) or PROVIDED_BY.get(name) or name
        if _canonical(distribution) not in available:
            missing.append(name)
    assert not missing, (
        f"{module} imports {', '.join(missing)}, which neither install_requires nor "
        f"the extras it is installed with ({', '.join(extras) or 'none'}) declare"
    )


def test_make_install_installs_every_extra():
    makefile = (ROOT / "Makefile").read_text()
    (line,) = re.findall(r'pip install .*-e "\.\[([^\]]*)\]"', makefile)
    assert set(line.split(",")) == set(EXTRAS)


def _import_name(distribution: str) -> str:
    renamed = {_canonical(d): name for name, d in DISTRIBUTIONS.items()}
    return renamed.get(distribution, distribution.replace("-", "_"))


# What the torch extra leaves out, by import name: a HEAR user's process must
# not need any of it.
NOT_FOR_HEAR = {
    _import_name(distribution)
    for distribution in set().union(*EXTRAS.values()) - CORE - EXTRAS["torch"] - NEVER_IMPORTED
    if distribution != "nvidia-ml-py"  # torch.cuda imports pynvml whenever it is installed
} | set(BESIDE_EXTRA)


def test_not_for_hear_holds_the_heavy_packages():
    """The exclusion list comes from setup.cfg; it must hold what made installs heavy."""
    assert {
        "pandas",
        "sklearn",
        "h5py",
        "pydantic",
        "matplotlib",
        "scipy",
        "yaml",
        "bitsandbytes",
        "onnx",
        "tensorflow",
        "pytorch_lightning",
        "heareval",
    } <= NOT_FOR_HEAR
    assert not NOT_FOR_HEAR & {"torch", "numpy", "safetensors", "huggingface_hub"}


@pytest.fixture(scope="module")
def mini_checkpoint(tmp_path_factory):
    """A random-weight CED-Mini checkpoint and a short wav."""
    import numpy as np
    import soundfile as sf

    folder = tmp_path_factory.mktemp("packaging")
    sf.write(folder / "clip.wav", np.zeros(8000, dtype=np.float32), 16000)
    return save_model(build_model("mini"), folder / "mini.safetensors")


def _loaded_after(code: str) -> set[str]:
    """Which of NOT_FOR_HEAR a fresh interpreter has loaded after running ``code``."""
    script = (
        f"import json, sys\n{code}\n"
        f"print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1])) & NOT_FOR_HEAR


def test_hear_module_needs_only_the_torch_extra(mini_checkpoint):
    code = (
        "import torch, hear_ced.mini as ced\n"
        f"model = ced.load_model({str(mini_checkpoint)!r})\n"
        "assert ced.get_scene_embeddings(torch.zeros(1, 16000), model).shape[0] == 1\n"
    )
    assert _loaded_after(code) == set()


def test_tagging_cli_needs_only_the_torch_extra(mini_checkpoint):
    clip = mini_checkpoint.parent / "clip.wav"
    code = (
        "from hear_ced.cli import main\n"
        f"main(['tag', {str(clip)!r}, '--model', {str(mini_checkpoint)!r}], "
        "standalone_mode=False)\n"
    )
    assert _loaded_after(code) == set()

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
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from packaging.requirements import Requirement

from hear_ced.checkpoints import save_model
from hear_ced.model import build_model

ROOT = Path(__file__).resolve().parent.parent
# Where each package's source lives (setup.cfg's package_dir): one top-level name.
PACKAGE_DIRS = {"hear_ced": "hear_ced", "hear_ced.distill": "distill", "hear_ced.eval": "eval"}
SELF = "hear-ced"

# The extras a module needs to be imported, besides the core: its own entry,
# else that of the nearest package pattern (``package.*``, the package's
# __init__ included). The core modules (empty tuple) run without torch:
# hear_ced's package and the modules of tagging from an exported graph.
MODULE_EXTRAS: dict[str, tuple[str, ...]] = {
    "hear_ced.common.*": (),
    "hear_ced.common.config": ("config",),  # the typed settings of ced-distill and ced-eval
    "hear_ced.*": ("torch",),
    "hear_ced": (),
    "hear_ced.audio": (),
    "hear_ced.cli": (),
    "hear_ced.labels": (),
    "hear_ced.specs": (),
    "hear_ced.tags": (),
    "hear_ced.runtime": (),
    "hear_ced.events": (),
    "hear_ced.embeddings": (),
    # the code of a Hugging Face export (package data, not a package), run by transformers
    **{
        f"hear_ced.hf_remote.{name}": ("hf",)
        for name in ("configuration_ced", "modeling_ced", "feature_extraction_ced")
    },
    "hear_ced.distill.*": ("train",),
    "hear_ced.probe": ("eval",),  # what train (finetune's frozen mode) also installs
    "hear_ced.eval.*": ("eval",),
    "hear_ced.eval.maeb": ("maeb",),  # ced-eval maeb: mteb's classes are its base
}

# What a module's functions may import beyond that, for one feature each.
FEATURE_EXTRAS: dict[str, tuple[str, ...]] = {
    "hear_ced.export": ("onnx",),  # hear-ced export-onnx
    "hear_ced.timeline": ("plot",),  # hear-ced tag --timeline --plot
    "hear_ced.embeddings": ("torch",),  # hear-ced embed without --onnx
    # the programs of hear-eval-kit and X-ARES that ced-eval drives
    "hear_ced.eval.compat": ("heareval",),
    "hear_ced.eval.probe": ("heareval",),
    "hear_ced.eval.hear_run.task_state": ("heareval",),
    "hear_ced.eval.hear_run.module_check": ("heareval",),
    "hear_ced.eval.xares.describe": ("xares",),
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
    package, folder = next((p, f) for p, f in PACKAGE_DIRS.items() if path.is_relative_to(ROOT / f))
    parts = path.relative_to(ROOT / folder).with_suffix("").parts
    return ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _extras_of(module: str) -> tuple[str, ...]:
    if module in MODULE_EXTRAS:
        return MODULE_EXTRAS[module]
    package = module
    while f"{package}.*" not in MODULE_EXTRAS:
        package = package.rpartition(".")[0]
    return MODULE_EXTRAS[f"{package}.*"]


def _third_party(tree: ast.Module) -> tuple[set[str], set[str]]:
    """Non-project, non-stdlib top-level names imported at module level and inside functions.

    Imports under ``if TYPE_CHECKING:`` never run and are left out.
    """
    module_level: set[str] = set()
    in_functions: set[str] = set()
    pending: list[tuple[ast.AST, bool]] = [(tree, False)]
    while pending:
        node, in_function = pending.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            pending += [(child, in_function) for child in node.orelse]
            continue
        found = in_functions if in_function else module_level
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        pending += [(child, inner) for child in ast.iter_child_nodes(node)]

    def third_party(names: set[str]) -> set[str]:
        return {n for n in names if n not in sys.stdlib_module_names and n != "hear_ced"}

    return third_party(module_level), third_party(in_functions)


SOURCES = sorted(path for folder in PACKAGE_DIRS.values() for path in (ROOT / folder).rglob("*.py"))
MODULES = {_module_name(path): path for path in SOURCES}


def _available(extras: tuple[str, ...]) -> set[str]:
    """The distributions an install with ``extras`` has: the core and the extras'."""
    return CORE.union(*(EXTRAS[extra] for extra in extras))


def _run_on_import(module: str, tree: ast.Module) -> set[str]:
    """The project modules that importing ``module`` runs: its packages and its module-level imports.

    Imports inside functions belong to the feature that calls them and are
    checked by their third-party names only (``test_imports_are_declared``).
    """
    names = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.If) and not ast.unparse(node.test).endswith("TYPE_CHECKING"):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
    names.add(module.rpartition(".")[0])
    run = set()
    for name in names:
        parts = name.split(".")
        run |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in run if name in MODULES and name != module}


def test_extras_of_names_only_real_modules_and_extras():
    names = {name.removesuffix(".*") for name in MODULE_EXTRAS} | set(FEATURE_EXTRAS)
    assert names <= set(MODULES)
    assert {f"{package}.*" for package in PACKAGE_DIRS} <= set(MODULE_EXTRAS)
    named = {
        extra for table in (MODULE_EXTRAS, FEATURE_EXTRAS) for e in table.values() for extra in e
    }
    assert named | set(BESIDE_EXTRA.values()) <= set(EXTRAS)


def _undeclared(names: set[str], extras: tuple[str, ...]) -> list[str]:
    available = _available(extras)
    return sorted(
        name
        for name in names
        if BESIDE_EXTRA.get(name) not in extras
        and _canonical(DISTRIBUTIONS.get(name) or PROVIDED_BY.get(name) or name) not in available
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_declared(path):
    """Each third-party import is in the core or an extra the module (or its feature) needs."""
    module = _module_name(path)
    extras = _extras_of(module)
    features = extras + FEATURE_EXTRAS.get(module, ())
    module_level, in_functions = _third_party(ast.parse(path.read_text(), str(path)))
    missing = _undeclared(module_level, extras) + _undeclared(in_functions, features)
    assert not missing, (
        f"{module} imports {', '.join(missing)}, which neither install_requires nor "
        f"the extras it is installed with ({', '.join(features) or 'none'}) declare"
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imported_modules_need_no_more(path):
    """A module's extras also cover every project module that importing it runs."""
    module = _module_name(path)
    available = _available(_extras_of(module))
    needed = {
        other: sorted(_available(_extras_of(other)) - available)
        for other in _run_on_import(module, ast.parse(path.read_text(), str(path)))
    }
    needed = {other: missing for other, missing in needed.items() if missing}
    assert not needed, f"importing {module} runs modules that need more than its extras: {needed}"


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
def small_checkpoint(tmp_path_factory):
    """A small random-weight CED checkpoint, with a short wav beside it."""
    folder = tmp_path_factory.mktemp("packaging")
    sf.write(folder / "clip.wav", np.zeros(8000, dtype=np.float32), 16000)
    model = build_model("tiny", embed_dim=32, depth=1, num_heads=2)
    return save_model(model, folder / "small.safetensors")


def _loaded_after(code: str) -> set[str]:
    """Which of NOT_FOR_HEAR a fresh interpreter has loaded after running ``code``."""
    script = (
        f"import json, sys\n{code}\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.splitlines()[-1])) & NOT_FOR_HEAR


@pytest.mark.slow
def test_hear_module_and_tagging_cli_need_only_the_torch_extra(small_checkpoint):
    clip = small_checkpoint.parent / "clip.wav"
    code = (
        "import torch, hear_ced.custom as ced\n"
        f"model = ced.load_model({str(small_checkpoint)!r})\n"
        "assert ced.get_scene_embeddings(torch.zeros(1, 16000), model).shape[0] == 1\n"
        "from hear_ced.cli import main\n"
        f"main(['tag', {str(clip)!r}, '--model', {str(small_checkpoint)!r}], "
        "standalone_mode=False)\n"
    )
    assert _loaded_after(code) == set()


def _outside_the_repository(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter started in an empty folder, as an installed user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )


@pytest.mark.parametrize("name", ["distill", "eval", "ced_common"])
def test_installed_names_are_under_hear_ced_only(name, tmp_path):
    """An install adds hear_ced, not generic top-level names a user's own code may hold."""
    package = {"ced_common": "hear_ced.common"}.get(name, f"hear_ced.{name}")
    assert _outside_the_repository(f"import {package}", tmp_path).returncode == 0
    done = _outside_the_repository(f"import {name}", tmp_path)
    assert f"No module named '{name}'" in done.stderr


@pytest.mark.slow
def test_wheel_holds_hear_ced_alone(tmp_path):
    """A built wheel maps distill/ and eval/ under hear_ced, data files and scripts included."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("hear_ced-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        scripts = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {
        "hear_ced",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    for expected in (
        "hear_ced/distill/train.py",
        "hear_ced/distill/configs/demo.yaml",
        "hear_ced/eval/xares/shims/torchaudio/__init__.py",
        "hear_ced/common/files.py",
        "hear_ced/data/audioset_class_labels_indices.csv",
        "hear_ced/hf_remote/modeling_ced.py",
    ):
        assert expected in names
    assert "ced-distill = hear_ced.distill.cli:main" in scripts
    assert "ced-eval = hear_ced.eval.cli:main" in scripts

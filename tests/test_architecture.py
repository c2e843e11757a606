"""The project's structure, checked: layering, no import cycles, one home for file output and printing.

Each rule here is a sentence of the README's architecture section; a change
that breaks one fails here instead of slowly eroding the structure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Where each package's source lives (setup.cfg's package_dir).
SOURCES = {
    "hear_ced": "hear_ced",
    "hear_ced.distill": "distill",
    "hear_ced.eval": "eval",
    "bench": "bench",
}

# Lower layers never import higher ones: data flows hear_ced -> distill -> eval -> bench.
LAYERS = ("hear_ced.common", "hear_ced", "hear_ced.distill", "hear_ced.eval", "bench")

# The one module that may rename a temporary file over a result.
FILE_OUTPUT_HOME = "hear_ced/common/files.py"

# The logging set-up: it writes the records and configures the project's loggers by name.
LOGGING_HOME = "hear_ced/common/logs.py"

# The training engine: the one module that steps an optimizer (or a schedule).
OPTIMIZER_STEP_HOME = "distill/engine.py"

# Command-line front ends: the only library modules that print a command's result.
CLI_MODULES = {"hear_ced/cli.py", "distill/cli.py", "eval/cli.py"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _layer(module: str) -> int:
    """The rank of the innermost layer that holds ``module``."""
    return max(
        (i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(f"{layer}.")),
        key=lambda i: len(LAYERS[i]),
    )


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The project module ``name`` refers to (a function import names its module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Project modules ``module`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _known(name)
            # Importing a.b.c runs a/__init__ and a/b/__init__ first, except the
            # packages that contain ``module``, which are already being imported.
            while target and not module.startswith(f"{target}."):
                if target != module:
                    found.add(target)
                target = target.rpartition(".")[0]
                target = target if target in MODULES else ""
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_import_graph_was_read():
    # Guards the rules below against passing on an empty or blind graph.
    assert len(MODULES) > 60
    assert "hear_ced.model" in GRAPH["hear_ced.distill.train"]
    assert "hear_ced.common.files" in GRAPH["hear_ced.checkpoints"]


def test_no_import_cycles():
    assert _cycles() == []


def test_cycle_finder_finds_a_cycle():
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["hear_ced.model"].add("hear_ced.checkpoints")
        assert any("hear_ced.model" in c and "hear_ced.checkpoints" in c for c in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_only_downwards(module):
    rank = _layer(module)
    upward = sorted(m for m in GRAPH[module] if _layer(m) > rank)
    assert upward == [], f"{module} imports a higher layer"


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def test_temp_and_rename_lives_in_one_place():
    """Every durable write goes through hear_ced.common.files, with its one fsync policy."""
    offenders = []
    for path in MODULES.values():
        relative = path.relative_to(ROOT).as_posix()
        if relative == FILE_OUTPUT_HOME:
            continue
        for call in _calls(path):
            name = _dotted(call.func)
            if name in {"os.replace", "os.rename", "shutil.move"} or name.endswith(
                ("mkstemp", "NamedTemporaryFile", ".rename")
            ):
                offenders.append(f"{relative}:{call.lineno} {name}")
    assert offenders == []


def test_library_code_logs_instead_of_printing():
    """Only the CLIs print (their command's result); libraries log, so callers can silence them."""
    offenders = []
    for path in MODULES.values():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("bench/") or relative in CLI_MODULES | {LOGGING_HOME}:
            continue
        for call in _calls(path):
            name = _dotted(call.func)
            if name in {"print", "tqdm.write", "click.echo", "click.secho"}:
                offenders.append(f"{relative}:{call.lineno} {name}")
    assert offenders == []


def test_modules_log_under_their_own_name():
    offenders = []
    for path in MODULES.values():
        if path.relative_to(ROOT).as_posix() == LOGGING_HOME:
            continue
        for call in _calls(path):
            if _dotted(call.func) == "logging.getLogger" and call.args:
                argument = call.args[0]
                # ``__spec__.name`` is the module's name also under ``python -m``.
                names = {n.id for n in ast.walk(argument) if isinstance(n, ast.Name)}
                constants = [n for n in ast.walk(argument) if isinstance(n, ast.Constant)]
                if constants or not names <= {"__name__", "__spec__"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert offenders == []


def _step_calls(tree: ast.AST) -> list[int]:
    """Lines of ``<anything>.step()`` calls: an optimizer's (or an LR scheduler's) update."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "step"
        and not node.args
        and not node.keywords
    ]


def test_step_scan_finds_an_optimizer_step():
    snippet = "def f(model, opt):\n    loss.backward()\n    self.optimizer.step()\n    opt.step()\n"
    assert _step_calls(ast.parse(snippet)) == [3, 4]


def test_only_the_training_engine_steps_an_optimizer():
    """Clipping, accumulation, precision and resume are fixed in one loop, not in each caller's."""
    steps = {
        path.relative_to(ROOT).as_posix(): _step_calls(TREES[module])
        for module, path in MODULES.items()
    }
    assert steps[OPTIMIZER_STEP_HOME], "the engine's own step was not found: the scan is blind"
    offenders = [
        f"{relative}:{line}"
        for relative, lines in steps.items()
        if relative != OPTIMIZER_STEP_HOME
        for line in lines
    ]
    assert offenders == []

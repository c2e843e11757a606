"""The encoder module X-ARES imports: this run's model, size and passes baked in.

X-ARES builds its encoder from a file path, without arguments, from the one
module-level name ending in ``Encoder``; the module's class name also names
X-ARES's output folders (``embeddings/CEDEncoder``, ``checkpoints/CEDEncoder``).
"""

from __future__ import annotations

from pathlib import Path

from ced_common.files import write_text

MODULE = "ced_xares_encoder"
CLASS = "CEDEncoder"

_TEMPLATE = '''"""This run's X-ARES encoder, written by ced-eval xares."""

import hear_ced.xares as _xares


class {cls}(_xares.CEDEncoder):
    def __init__(self) -> None:
        super().__init__(variant={variant!r}, model_file_path={model!r}, passes={passes!r})
'''


def write_encoder_module(
    work_dir: Path, variant: str | None, model: str | None, passes: int
) -> str:
    """Write the module into ``work_dir``; returns the path X-ARES is given (relative to it)."""
    path = work_dir / f"{MODULE}.py"
    write_text(path, _TEMPLATE.format(cls=CLASS, variant=variant, model=model or "", passes=passes))
    return path.name

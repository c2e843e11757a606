"""``python -m hear_ced.eval.xares.launch DECODE_LOG MODULE ARGS...``: run X-ARES with the shims.

The process puts :data:`SHIMS` first on its import path (X-ARES's own spawned
workers inherit it), names the decode log for the torchaudio shim, and runs
``MODULE`` as ``__main__``. Nothing of this reaches the interpreter that
started it.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

SHIMS = Path(__file__).resolve().parent / "shims"
DECODE_LOG = "CED_XARES_DECODE_LOG"  # where the torchaudio shim appends failed decodes


def command(decode_log: Path, module: str, arguments: list[str]) -> list[str]:
    """The command line running ``python -m module arguments`` under the shims."""
    return [sys.executable, "-m", __spec__.name, str(decode_log), module, *arguments]


def main(argv: list[str]) -> None:
    decode_log, module, *arguments = argv
    os.environ[DECODE_LOG] = decode_log
    sys.path.insert(0, str(SHIMS))
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])

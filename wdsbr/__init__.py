"""wdsbr: fine-tune Whisper on Breton from streamed WebDataset shards with DeepSpeed ZeRO-2.

One module per concern (docs/design.md's module table lists them). This file imports nothing but the standard
library, so `check_dependencies` can tell a user who runs a tool with the wrong Python what to do.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"
# What every tool imports (import names, here also the PyPI names); deepspeed only where the trainer needs it.
REQUIRED = ("torch", "transformers", "webdataset", "click", "soundfile", "soxr", "jiwer", "numpy", "tqdm")


def check_dependencies(*extra: str) -> None:
    """Exit with one `error:` line naming the fix when this Python lacks what the tools need (a plain `python`
    outside the virtualenv `make setup` made), instead of a ModuleNotFoundError traceback."""
    missing = [name for name in (*REQUIRED, *extra) if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    where = "" if venv.is_file() else " (it does not exist yet)"
    sys.stderr.write(
        f"error: {sys.executable} has no {', '.join(missing)}: `make setup` installs them into .venv{where}; "
        f"then run the tools with {venv} (or `source .venv/bin/activate`)\n"
    )
    sys.exit(1)

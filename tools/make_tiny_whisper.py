"""Build a tiny randomly-initialised Whisper (model + tokenizer + feature extractor) in a local folder.

    python tools/make_tiny_whisper.py runs/tiny-whisper --texts sample/corpus

For smoke runs, tests and benchmarks where nothing can be downloaded: it loads with
`from_pretrained(folder)` exactly like `openai/whisper-small`, has Whisper's special tokens in their real
order (so `<|br|><|transcribe|>` prompts, generate() and pipeline() work), and a byte-level BPE trained on the
transcripts found under `--texts`. It learns nothing useful; it only makes the pipeline run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback


import click

from wdsbr.cli import command, run


@command()
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--texts",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Folder whose *.txt transcripts (any depth) train the tiny BPE; default: a few built-in sentences.",
)
@click.option(
    "--n-mels",
    type=click.Choice(["80", "128"]),
    default="80",
    show_default=True,
    help="Mel bins: 80 like whisper-small, 128 like whisper-large-v3.",
)
@click.option("--d-model", type=int, default=64, show_default=True, help="Hidden size.")
@click.option("--layers", type=int, default=2, show_default=True, help="Encoder and decoder layers each.")
@click.option("--english-only", is_flag=True, help="Build an English-only (*.en style) model: no language tokens.")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation seed.")
def main(output_dir, texts, n_mels, d_model, layers, english_only, seed):
    lines = None
    if texts is not None:
        lines = [p.read_text(encoding="utf-8", errors="replace").strip() for p in sorted(texts.rglob("*.txt"))]
        lines = [line for line in lines if line]
        if not lines:
            raise click.ClickException(f"{texts}: no non-empty .txt transcripts found")
    from wdsbr.model import build_tiny_whisper  # torch and transformers: only once the options are read

    folder = build_tiny_whisper(
        output_dir, lines, n_mels=int(n_mels), d_model=d_model, layers=layers, multilingual=not english_only, seed=seed
    )
    click.echo(f"tiny Whisper written to {folder}")


if __name__ == "__main__":
    run(main)

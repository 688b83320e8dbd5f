"""Export a trained Whisper for deployment: CTranslate2, the format faster-whisper and WhisperX load.

    python tools/export.py --model runs/br-small/best --to ct2 --output runs/br-small/best-ct2 --quantization int8
    python launch/evaluate.py --model runs/br-small/best-ct2 --engine faster-whisper --data shards/test   # its WER

The conversion is CTranslate2's own converter (what `ct2-transformers-converter` runs); `tokenizer.json`,
`preprocessor_config.json` (the mel-bin count faster-whisper needs for 128-mel models) and the tokenizer files are
copied beside `model.bin`. Then, in Python:

    from faster_whisper import WhisperModel
    segments, info = WhisperModel("runs/br-small/best-ct2").transcribe("interview.wav", language="br")

Quantizations: float32 (the default: the WER evaluate.py gives is transformers' within noise), float16 (GPU),
int8 (CPU: smaller and faster), int8_float16, int8_float32, bfloat16, int8_bfloat16, int16.

    python tools/export.py --model runs/br-small/best --to ggml --output runs/br-small/ggml-model.bin

writes the legacy ggml file whisper.cpp loads (`wdsbr.ggml`: float16 2-D weights by default, `--ftype f32`).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import json

import click

from wdsbr.cli import command, run
from wdsbr.options import QUANTIZATIONS


@command()
@click.option("--model", required=True, help="A Whisper save_pretrained folder (runs/NAME/best).")
@click.option(
    "--to",
    "target",
    type=click.Choice(["ct2", "ggml"]),
    default="ct2",
    show_default=True,
    help="Target format: ct2 = CTranslate2 (faster-whisper, WhisperX), a folder; ggml = whisper.cpp, one file.",
)
@click.option("--output", required=True, help="The folder (ct2) or file (ggml) to write; its parent is created.")
@click.option(
    "--quantization", default="float32", show_default=True, help=f"CTranslate2 weight type: {', '.join(QUANTIZATIONS)}."
)
@click.option(
    "--ftype",
    type=click.Choice(["f16", "f32"]),
    default="f16",
    show_default=True,
    help="ggml weight type (2-D weights; the rest stays float32).",
)
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(model, target, output, quantization, ftype, overwrite, debug):
    """Convert --model to --to format in --output; prints one JSON line (the files written, any warning)."""
    if target == "ggml":
        from wdsbr.export import check_whisper_folder
        from wdsbr.ggml import export_ggml

        try:
            check_whisper_folder(model)
        except ValueError as error:  # the same one-line errors as --to ct2
            raise ValueError(f"--model {error}") from None
        click.echo(json.dumps(export_ggml(model, output, ftype, overwrite=overwrite)))
        return
    from wdsbr.export import export_ct2  # torch and transformers: only once the options are read

    report = export_ct2(model, output, quantization, overwrite=overwrite)  # every problem first, in one line
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(json.dumps(report))


if __name__ == "__main__":
    run(main)

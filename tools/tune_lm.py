"""Tune the language model's weights α and β for a trained model on its validation set, and save them beside it.

    python tools/tune_lm.py --model runs/br-small/best --data shards/validation --lm lm/br.arpa --num-beams 5
    python launch/evaluate.py --model runs/br-small/best --data shards/test --lm lm/br.arpa --num-beams 5

Every validation clip is encoded once; then it is decoded greedily, with plain beam search, and with the LM fused at
every (α, β) of the grid (`--alphas` × `--betas`). The lowest WER's point (ties to the smaller weights) is written to
MODEL/lm.json, which `launch/evaluate.py --lm` reads unless `--lm-alpha`/`--lm-beta` are given, and the model card
(MODEL/README.md) gains a section with the validation WER without and with the LM, the LM's order, text and source.
Tune on validation, report on test: the test set must not choose the weights.
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
from wdsbr.options import PRECISIONS


def floats(text: str) -> list[float]:
    try:
        values = [float(item) for item in text.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give numbers separated by spaces or commas") from None
    if not values or any(value < 0 for value in values):
        raise click.BadParameter(f"{text!r}: give one or more numbers ≥ 0")
    return values


@command()
@click.option("--model", required=True, help="The trained Whisper folder (runs/NAME/best): lm.json is written here.")
@click.option("--data", required=True, help="Validation shards (folder, brace pattern or URL), never the test set.")
@click.option("--lm", "lm_path", required=True, help="The n-gram LM (tools/build_lm.py).")
@click.option("--num-beams", type=int, default=5, show_default=True, help="Beam width, as evaluate.py will use.")
@click.option("--alphas", default="0.1 0.25 0.5 0.75 1", show_default=True, help="α values to try.")
@click.option("--betas", default="0 0.5 1 2", show_default=True, help="β values to try.")
@click.option("--language", default="br", show_default=True, help="The language token (Breton: br).")
@click.option(
    "--text-normalizer", default="default", show_default=True, help="The scoring normaliser (the model's own)."
)
@click.option("--batch-size", type=int, default=16, show_default=True, help="Clips per decoding batch.")
@click.option("--max-new-tokens", type=int, default=225, show_default=True, help="Max new tokens per transcript.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True, help="Compute type.")
@click.option("--num-workers", type=int, default=1, show_default=True, help="DataLoader workers.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(
    model, data, lm_path, num_beams, alphas, betas, language, text_normalizer, batch_size, max_new_tokens, precision,
    num_workers, debug,
):  # fmt: skip
    """Choose --lm's α and β for --model on --data; write MODEL/lm.json and the model card's LM section."""
    alphas, betas = floats(alphas), floats(betas)
    if num_beams < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("--num-beams, --batch-size and --max-new-tokens must be at least 1")
    import torch

    from wdsbr import lm as lm_module
    from wdsbr.data import LoaderOptions, make_eval_loader
    from wdsbr.evaluation import generate_kwargs
    from wdsbr.model import check_model, is_multilingual, language_code, load_model, load_processor, quiet_libraries
    from wdsbr.modelcard import add_lm_section
    from wdsbr.scoring import load_normalizer
    from wdsbr.streams import list_shards

    quiet_libraries()
    normalize = load_normalizer(text_normalizer)
    language = language_code(language)
    list_shards(data)  # a missing or empty --data: one line, before the model loads
    language_model = lm_module.load_lm(lm_path)
    check_model(model, language)
    processor = load_processor(model, language)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    whisper = load_model(model).to(dtype).eval()
    tokenizer = processor.tokenizer
    loader = make_eval_loader(
        data,
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=whisper.config.num_mel_bins,
            micro_batch_size=batch_size,
            num_workers=num_workers,
            normalize=normalize,
            max_label_tokens=whisper.config.max_target_positions,
            decoder_start_token_id=whisper.config.decoder_start_token_id,
        ),
    )
    gen_kwargs = generate_kwargs(
        language if is_multilingual(model, whisper.generation_config) else None, num_beams, max_new_tokens
    )

    def said(point: dict) -> None:
        extra = f", greedy {100 * point['greedy']:.2f} %" if "greedy" in point else ""
        click.echo(f"alpha {point['alpha']:g} beta {point['beta']:g}: WER {100 * point['wer']:.2f} %{extra}", err=True)

    result = lm_module.tune_weights(
        whisper, loader, tokenizer, normalize, language_model, gen_kwargs, alphas, betas, dtype, on_point=said
    )
    info_path = Path(f"{lm_path}.json")
    settings = {
        "lm": str(lm_path),
        "alpha": result["best"]["alpha"],
        "beta": result["best"]["beta"],
        "num_beams": num_beams,
        "validation": data,
        "samples": result["samples"],
        "normalizer": text_normalizer,
        "wer_greedy": result["greedy"],
        "wer_beam": result["beam"],
        "wer_lm": result["best"]["wer"],
        "grid": result["grid"],
        "lm_info": json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else None,
    }
    out = Path(model) / lm_module.SETTINGS_FILE
    out.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    add_lm_section(model, settings)
    click.echo(json.dumps({key: settings[key] for key in settings if key not in ("grid", "lm_info")}))


if __name__ == "__main__":
    run(main)

"""Stream one training batch from shards, exactly as the trainer will see it, and print what is in it.

    python tools/peek_batch.py --model runs/demo/tiny-whisper --shards runs/demo/shards/train

Checks a shard folder and a model's tokenizer together before a long run: shapes, the decoded prompt and
labels of the first sample, audio seconds, and anything skipped on the way.
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
@click.option("--model", required=True, help="Hub id (openai/whisper-small) or local folder of a Whisper model.")
@click.option("--shards", required=True, help="Shard folder, brace pattern or URL (pipe:…, https://…).")
@click.option("--language", default="br", show_default=True, help="Whisper language code or name.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Samples in the batch.")
@click.option("--num-workers", type=int, default=0, show_default=True, help="DataLoader workers.")
@click.option(
    "--text-normalizer",
    default="default",
    show_default=True,
    help="'default' (wdsbr.text.clean_text) or module:function.",
)
def main(model, shards, language, batch_size, num_workers, text_normalizer):
    from wdsbr.data import LoaderOptions, make_train_loader  # torch and transformers: only once the options are read
    from wdsbr.model import load_processor
    from wdsbr.scoring import load_normalizer

    processor = load_processor(model, language=language)  # a bad model, shard or language: one line (cli.Command)
    tokenizer = processor.tokenizer
    loader = make_train_loader(
        shards,
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=processor.feature_extractor.feature_size,
            micro_batch_size=batch_size,
            num_workers=num_workers,
            normalize=load_normalizer(text_normalizer),
        ),
    )
    batch = next(iter(loader))
    features, labels = batch["input_features"], batch["labels"]
    first = labels[0][labels[0] != -100].tolist()
    click.echo(
        f"input_features {tuple(features.shape)} {features.dtype}  min {features.min():.3f} max {features.max():.3f}"
    )
    click.echo(f"labels         {tuple(labels.shape)} {labels.dtype}  (-100 = padding)")
    click.echo(
        f"audio          {batch['audio_seconds']:.1f} s in {len(batch['keys'])} clips: {', '.join(batch['keys'])}"
    )
    click.echo(f"first sample   {batch['texts'][0]!r}")
    click.echo(f"  its labels   {tokenizer.decode(first)!r}")
    click.echo(f"batches/epoch  {loader.batches_per_rank} on 1 rank;  skipped {loader.skip_counter.as_dict() or 0}")


if __name__ == "__main__":
    run(main)

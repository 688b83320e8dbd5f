"""Shard a speech corpus into WebDataset tars for training: decode, mono, 16 kHz, validate, split, write.

    python tools/shard_corpus.py ./corpus shards/
    python tools/shard_corpus.py ./cv-corpus-17.0/br shards/ --workers 16
    python tools/shard_corpus.py ./cv-corpus-17.0/br shards/ --cv-train validated   # more train, no dev/test overlap
    python tools/shard_corpus.py ./long_recordings shards/          # .ali alignments (anaouder) + their recordings
    python tools/shard_corpus.py --hf mozilla-foundation/common_voice_17_0 --hf-config br shards/

Writes shards/{train,validation,test}/shard-000000.tar … and shards/manifest.json (what was kept, what was
rejected and why). The source kind is detected: a .tsv file (path<TAB>text), a Common Voice release folder
(train/dev/test.tsv + clips/), a folder with anaouder .ali alignments of long recordings, or a folder of
ID.wav + ID.txt pairs at any depth; --hf reads a Hugging Face dataset (hub name or local folder). See
wdsbr/corpus.py (and wdsbr/sources/, one module per kind), wdsbr/ali.py and wdsbr/shards.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import re

import click

from wdsbr.cli import command, run

SECTIONS = {
    "Source": [
        "cv_train",
        "ali",
        "ali_windows",
        "hf",
        "hf_config",
        "hf_splits",
        "token",
        "text_column",
        "audio_column",
        "speaker_column",
    ],
    "Splits": ["val_fraction", "test_fraction", "speaker_from_folder", "seed"],
    "Filtering": ["min_seconds", "max_seconds", "exclude_sentences", "text_normalizer"],
    "Shards": ["samples_per_shard", "max_shard_bytes", "audio_format", "overwrite"],
    "Run": ["workers", "progress", "debug", "help"],
}


def parse_bytes(ctx: click.Context | None, param: click.Parameter | None, value: str | int) -> int:
    """'500MB', '1.5GB', '200k' or a plain number of bytes (decimal units: 1 MB = 10**6 bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(value), re.IGNORECASE)
    if not match:
        raise click.BadParameter(f"{value!r}: expected a size such as 500MB, 2GB or 1000000")
    number, unit = match.groups()
    scale = 1000 ** ("kmgt".index(unit.lower()) + 1) if unit else 1
    return int(float(number) * scale)


@command(SECTIONS, help_option_names=["-h", "--help"])
@click.argument("paths", nargs=-1, metavar="[SOURCE] OUTPUT")
@click.option(
    "--cv-train",
    type=click.Choice(["train", "validated"]),
    default="train",
    show_default=True,
    help="Common Voice train split: train.tsv as released, or validated.tsv minus every clip whose speaker or "
    "sentence is in dev.tsv/test.tsv (rejections cv_speaker_in_dev_test, cv_sentence_in_dev_test).",
)
@click.option(
    "--ali",
    is_flag=True,
    help="Read SOURCE as a folder of anaouder .ali alignments (detected anyway when it holds .ali files): "
    "every aligned sentence is cut out of its long recording.",
)
@click.option(
    "--ali-windows",
    is_flag=True,
    help="With .ali alignments: group a recording's consecutive sentences into windows of up to --max-seconds, "
    "with their segments' times (for train.py --timestamps) instead of one input per sentence.",
)
@click.option("--hf", metavar="NAME", help="Read a Hugging Face dataset (hub name or local folder) instead of SOURCE.")
@click.option("--hf-config", metavar="CONFIG", help="Dataset configuration, e.g. the language 'br' for Common Voice.")
@click.option(
    "--hf-split",
    "hf_splits",
    multiple=True,
    metavar="SPLIT",
    help="HF split to read (repeatable): train, validation/dev, test. Default: those the dataset has.",
)
@click.option(
    "--token",
    envvar="HF_TOKEN",
    metavar="TOKEN",
    help="Hugging Face token for gated datasets (default: $HF_TOKEN). Never printed or written.",
)
@click.option("--text-column", default="sentence", show_default=True, help="HF column with the transcript.")
@click.option("--audio-column", default="audio", show_default=True, help="HF column with the audio.")
@click.option("--speaker-column", default=None, help="HF column with the speaker id. Default: client_id when present.")
@click.option(
    "--val-fraction",
    type=float,
    default=0.05,
    show_default=True,
    help="Share of keys (of speakers when known) hashed to validation, for sources without given splits.",
)
@click.option(
    "--test-fraction",
    type=float,
    default=0.05,
    show_default=True,
    help="Share of keys (of speakers when known) hashed to test, for sources without given splits.",
)
@click.option(
    "--speaker-from-folder",
    is_flag=True,
    help="Folder corpus: the first sub-folder (below a split folder) names the speaker, so no speaker is in two "
    "splits.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Shuffles the order listed inputs are written in, so shards mix speakers (an HF stream keeps its order).",
)
@click.option(
    "--min-seconds", type=float, default=0.2, show_default=True, help="Reject clips shorter than this (too_short)."
)
@click.option(
    "--max-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Reject clips longer than this (too_long); 30 s is Whisper's window.",
)
@click.option(
    "--exclude-sentences",
    multiple=True,
    help="Reject clips that say one of these sentences (leaked_sentence): a text file (one a line), a folder of "
    "ID.txt, or shards; repeatable. Give your validation and test sets, so training never hears their sentences.",
)
@click.option(
    "--text-normalizer",
    default="default",
    show_default=True,
    help="How --exclude-sentences compares: 'default', 'breton' (anaouder) or module:function, as the scoring does.",
)
@click.option("--samples-per-shard", type=int, default=1000, show_default=True, help="Samples per tar shard at most.")
@click.option(
    "--max-shard-bytes",
    default="500MB",
    show_default=True,
    metavar="SIZE",
    callback=parse_bytes,
    help="Bytes per tar shard at most, e.g. 500MB or 2GB (a single larger sample gets its own shard).",
)
@click.option(
    "--audio-format",
    type=click.Choice(["flac", "wav"]),
    default="flac",
    show_default=True,
    help="Audio member format: 16 kHz mono PCM-16, flac (lossless, ~half the size) or wav.",
)
@click.option("--overwrite", is_flag=True, help="Replace the split folders and manifest of a non-empty OUTPUT.")
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="Decoding processes; 0: one per available CPU. Output is identical for any value.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar on stderr.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (the token is still never shown).")
def main(
    paths,
    cv_train,
    ali,
    ali_windows,
    hf,
    hf_config,
    hf_splits,
    token,
    text_column,
    audio_column,
    speaker_column,
    val_fraction,
    test_fraction,
    speaker_from_folder,
    seed,
    min_seconds,
    max_seconds,
    exclude_sentences,
    text_normalizer,
    samples_per_shard,
    max_shard_bytes,
    audio_format,
    overwrite,
    workers,
    progress,
    debug,
):
    """Shard SOURCE (a corpus folder, Common Voice release, folder of .ali alignments or .tsv) or --hf NAME into
    OUTPUT."""
    if hf and len(paths) != 1:
        raise click.UsageError("with --hf NAME give only OUTPUT (no SOURCE)")
    if not hf and len(paths) != 2:
        raise click.UsageError("expected SOURCE OUTPUT (or --hf NAME OUTPUT)")
    if hf and (ali or ali_windows or cv_train != "train"):
        raise click.UsageError("--ali, --ali-windows and --cv-train read a SOURCE folder, not --hf")
    output = Path(paths[-1])
    from wdsbr import corpus as corpus_lib  # torch (through webdataset): only once the options are read
    from wdsbr import shards

    options = shards.ShardOptions(
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        samples_per_shard=samples_per_shard,
        max_shard_bytes=max_shard_bytes,
        audio_format=audio_format,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        seed=seed,
        workers=workers,
    )
    problems = shards.check_options(options)
    if problems:
        raise shards.ShardError("; ".join(problems))
    # a CorpusError or ShardError (ValueErrors): one line `error: …`, exit 2 (wdsbr.cli.run, as every CLI here)
    shards.check_output_dir(output, overwrite=overwrite, source=None if hf else paths[0])
    if hf:
        corpus = corpus_lib.open_hf_corpus(
            hf,
            config=hf_config,
            splits=hf_splits,
            token=token,
            text_column=text_column,
            audio_column=audio_column,
            speaker_column=speaker_column,
        )
    else:
        corpus = corpus_lib.open_corpus(
            paths[0],
            exclude=output,
            speaker_from_folder=speaker_from_folder,
            cv_train=cv_train,
            ali=ali,
            ali_windows=max_seconds if ali_windows else None,
        )
    exclude = None
    if exclude_sentences:  # --exclude-sentences: the leakage guard
        from wdsbr.scoring import load_normalizer

        normalize = load_normalizer(text_normalizer)
        exclude = shards.load_exclusion(exclude_sentences, normalize)
        click.echo(f"excluding {len(exclude.sentences)} sentences of {', '.join(exclude_sentences)}")
    manifest = shards.shard_corpus(corpus, output, options, overwrite=overwrite, progress=progress, exclude=exclude)
    click.echo(shards.format_summary(manifest, output))
    for line in shards.empty_split_warnings(manifest):  # the trainer needs train and validation: say it now
        click.echo(line, err=True)


if __name__ == "__main__":
    run(main)

"""Build an n-gram language model from plain text, for fusion at decode time (`launch/evaluate.py --lm`).

    python tools/build_lm.py text/wikipedia.txt text/ofis.txt --order 5 --output lm/br.arpa \\
        --text-normalizer breton --exclude-sentences shards/validation --exclude-sentences shards/test

Each line of each TEXT file is a sentence; it is normalised with the scoring normaliser (`--text-normalizer`,
what training and scoring use: Breton's is anaouder's) and a line equal to a sentence of an
`--exclude-sentences` set (the validation and test sentences: shards, a folder of ID.txt or a text file) is
removed and counted, so the LM cannot have read the answers. The model is interpolated modified Kneser–Ney as
KenLM's lmplz estimates it (wdsbr.lm), written as an ARPA file KenLM loads (its `build_binary` makes a faster-loading
copy of a big one), with OUTPUT.json beside it: order, sentences, words, sources, normaliser, removed sentences.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import json
import os

import click

from wdsbr.cli import command, run


@command()
@click.argument("text", nargs=-1, required=True)
@click.option("--order", type=int, default=5, show_default=True, help="The n-gram order (5: Whisper-LM's).")
@click.option("--output", required=True, help="The ARPA file to write (OUTPUT.json is written beside it).")
@click.option(
    "--text-normalizer",
    default="default",
    show_default=True,
    help="The scoring normaliser: 'default', 'breton' (anaouder) or module:function; use the model's.",
)
@click.option(
    "--exclude-sentences",
    multiple=True,
    metavar="SPEC",
    help="Held-out sentences no LM line may equal (shards, a folder of ID.txt, or a text file); repeatable.",
)
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(text, order, output, text_normalizer, exclude_sentences, overwrite, debug):
    """Estimate an --order-gram LM from the TEXT files (one sentence a line) into --output; prints a JSON line."""
    from wdsbr import lm, shards
    from wdsbr.scoring import load_normalizer

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: exists (give --overwrite to replace it)")
    if order < 2:
        raise ValueError(f"--order {order}: must be at least 2 (KenLM loads bigram models and up)")
    missing = [path for path in text if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such text file")
    normalize = load_normalizer(text_normalizer)
    exclude = shards.load_exclusion(exclude_sentences, normalize) if exclude_sentences else None
    sentences, removed = [], 0
    for path in text:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        for line in lines:
            normalized = normalize(line)
            if not normalized.split():
                continue
            if exclude is not None and normalized in exclude.sentences:
                removed += 1
                continue
            sentences.append(normalized.split())
    if exclude is not None:
        click.echo(f"removed {removed} lines equal to a sentence of {', '.join(exclude_sentences)}", err=True)
    model = lm.estimate(sentences, order)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    model.write(partial)
    lm.load_lm(partial)  # what evaluate.py will do: refuse to leave a file KenLM cannot load
    os.replace(partial, output)
    info = {
        "lm": str(output),
        "order": order,
        "sentences": len(sentences),
        "words": sum(map(len, sentences)),
        "vocabulary": len(model.orders[0]) - 2,  # less <s> and <unk>
        "ngrams": [len(grams) for grams in model.orders],
        "sources": [str(path) for path in text],
        "normalizer": text_normalizer,
        "excluded_sentences": {"specs": list(exclude_sentences), "removed": removed},
        "discount_fallback_orders": model.fallback_orders,
        "estimator": "interpolated modified Kneser-Ney (wdsbr.lm, as KenLM lmplz)",
    }
    Path(f"{output}.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    click.echo(json.dumps(info))


if __name__ == "__main__":
    run(main)

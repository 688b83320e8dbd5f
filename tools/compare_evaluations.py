"""Compare evaluations of the same test clips: a few transcripts side by side, then one line of WER and CER each.

    BASE=~/.cache/wdsbr/base  # tools/fetch_pretrained.py base ~/.cache/wdsbr/base
    python launch/evaluate.py --model $BASE --data shards/test --output runs/zs/preds.tsv > runs/zs/scores.json
    python launch/evaluate.py --model runs/br/best --data shards/test --output runs/ft/preds.tsv > runs/ft/scores.json
    python tools/compare_evaluations.py zero-shot=runs/zs fine-tuned=runs/ft --examples 3

Each FOLDER holds what launch/evaluate.py wrote: its JSON line (scores.json) and its per-sample TSV (preds.tsv).
The examples are the first clips in key order, the same for every evaluation; their text is the raw transcript
as decoded, and the reference as written. The closing lines read `NAME: WER x CER y`, from each JSON's `wer` and
`cer` (the evaluation's own normaliser), in the order given. `make demo` ends with this. A missing or broken file
is one line `error: …` and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import csv  # noqa: E402
import json  # noqa: E402

import click  # noqa: E402

from wdsbr.cli import command, run  # noqa: E402


def load(folder: Path) -> tuple[dict, dict[str, dict]]:
    """(the JSON row, {key: TSV row}) of one evaluation folder; a missing or broken file is one clear error."""
    scores, preds = folder / "scores.json", folder / "preds.tsv"
    for path in (scores, preds):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (launch/evaluate.py --output {preds} > {scores} writes it)")
    try:
        row = json.loads(scores.read_text().strip().splitlines()[-1])
    except (ValueError, IndexError) as error:
        raise ValueError(f"{scores}: not evaluate.py's JSON line ({error})") from None
    with open(preds, encoding="utf-8", newline="") as stream:
        samples = {sample["key"]: sample for sample in csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)}
    return row, samples


@command()
@click.argument("evaluations", nargs=-1, required=True)
@click.option("--examples", type=int, default=3, show_default=True, help="Clips shown side by side.")
def main(evaluations: tuple[str, ...], examples: int) -> None:
    """EVALUATIONS: NAME=FOLDER, each an evaluate.py output folder (scores.json + preds.tsv) of the same clips."""
    loaded = {}
    for spec in evaluations:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise click.UsageError(f"{spec!r}: give NAME=FOLDER")
        loaded[name] = load(Path(folder))
    keys = sorted(set.intersection(*(set(samples) for _, samples in loaded.values())))
    width = max(len(name) for name in loaded)
    for key in keys[:examples]:
        first = next(iter(loaded.values()))[1][key]
        click.echo(f"{key}\n  {'reference':>{width}}: {first['raw_reference']}")
        for name, (_, samples) in loaded.items():
            click.echo(f"  {name:>{width}}: {samples[key]['raw_prediction']}")
    for name, (row, _) in loaded.items():
        click.echo(f"{name}: WER {row['wer']:.4f} CER {row['cer']:.4f}")


if __name__ == "__main__":
    run(main)

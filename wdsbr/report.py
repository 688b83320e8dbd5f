"""The files `launch/evaluate.py --output` writes: a TSV of every sample, worst first, and a short Markdown
report (the worst samples, the most frequent word substitutions, deletions and insertions).

The per-sample numbers come from `wdsbr.scoring.score_samples` (one jiwer alignment of the same normalised text
`score_all` scores, so they add up to the corpus WER); this module only writes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wdsbr.scoring import SampleScore, WordErrors

TSV_COLUMNS = ("key", "reference", "prediction", "wer", "errors", "reference_words", "raw_reference", "raw_prediction")


def _cell(text: str) -> str:
    """One TSV field: tabs and line breaks become spaces so every sample stays on one line."""
    return " ".join(str(text).split("\n")).replace("\t", " ").replace("\r", " ")


def write_tsv(samples: list[SampleScore], path: str | Path) -> Path:
    """`key reference prediction wer errors reference_words raw_reference raw_prediction`, one sample a line,
    in the order given (worst first from `score_samples`); an unscored sample has an empty `wer`."""
    path = Path(path)
    lines = ["\t".join(TSV_COLUMNS)]
    for s in samples:
        wer = "" if math.isnan(s.wer) else f"{s.wer:.6f}"
        lines.append(
            "\t".join(
                _cell(v)
                for v in (
                    s.key,
                    s.reference,
                    s.prediction,
                    wer,
                    s.errors,
                    s.reference_words,
                    s.raw_reference,
                    s.raw_prediction,
                )
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, one line, an empty text shown as an em dash."""
    text = _cell(text).replace("|", "\\|")
    return text if text.strip() else "—"


def write_markdown(
    samples: list[SampleScore],
    errors: WordErrors,
    metrics: dict[str, Any],
    path: str | Path,
    *,
    worst: int = 20,
    top: int = 20,
    rejected: list[dict] | None = None,
) -> Path:
    """The report next to the TSV: the metrics, the `worst` samples, the `top` most frequent word substitutions
    (and deletions, insertions), and the inputs a folder run had to reject."""
    path = Path(path)

    def number(value: Any) -> str:
        return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"# Evaluation of `{metrics.get('model')}` on `{metrics.get('data')}`", ""]
    shown = ("wer", "cer", "samples", "audio_hours", "seconds", "rtf", "skipped_samples", "rejected_inputs")
    lines += [
        "| " + " | ".join(shown) + " |",
        "|" + "---:|" * len(shown),
        "| " + " | ".join(number(metrics.get(name)) for name in shown) + " |",
        "",
    ]
    settings = ("normalizer", "language", "precision", "num_beams", "batch_size", "world_size")
    lines += [", ".join(f"{name} `{metrics.get(name)}`" for name in settings if name in metrics) + ".", ""]

    lines += [
        f"## The {min(worst, len(samples))} worst samples",
        "",
        "WER on the normalised text (what was scored); the full list is the TSV beside this file.",
        "",
        "| key | WER | errors / words | reference | prediction |",
        "|---|---:|---:|---|---|",
    ]
    for s in samples[:worst]:
        lines.append(
            f"| {_md(s.key)} | {number(None if math.isnan(s.wer) else s.wer)} | {s.errors} / {s.reference_words} "
            f"| {_md(s.reference)} | {_md(s.prediction)} |"
        )
    lines.append("")

    lines += ["## Most frequent word substitutions", ""]
    if errors.substitutions:
        lines += ["| count | reference | prediction |", "|---:|---|---|"]
        lines += [
            f"| {count} | {_md(ref)} | {_md(hyp)} |" for (ref, hyp), count in errors.substitutions.most_common(top)
        ]
    else:
        lines.append("None.")
    lines.append("")
    for title, counter in (
        ("deletions (reference words missing)", errors.deletions),
        ("insertions (words added)", errors.insertions),
    ):
        lines += [f"## Most frequent {title}", ""]
        lines.append(", ".join(f"{_md(word)} ×{count}" for word, count in counter.most_common(top)) or "None.")
        lines.append("")

    if rejected:
        lines += [f"## Rejected inputs ({len(rejected)})", "", "| source | reason | detail |", "|---|---|---|"]
        lines += [f"| {_md(r['source'])} | {r['reason']} | {_md(r['detail'])} |" for r in rejected]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

"""tools/compare_evaluations.py (how `make demo` ends): the first clips in key order side by side, then one
`NAME: WER x CER y` line per evaluation from its JSON, in the order given; a missing file is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from wdsbr.report import write_tsv
from wdsbr.scoring import SampleScore

COMPARE = Path(__file__).resolve().parents[1] / "tools" / "compare_evaluations.py"


def evaluation(folder: Path, wer: float, cer: float, predictions: dict[str, str]) -> Path:
    """A folder as `launch/evaluate.py --output folder/preds.tsv > folder/scores.json` leaves it (worst first)."""
    folder.mkdir(parents=True)
    references = {"b": "C'hoant am eus da zebriñ.", "a": "Demat deoc'h!", "c": "Kenavo."}
    samples = [
        SampleScore(key, references[key].lower(), text.lower(), 1.0, 1, 3, references[key], text)
        for key, text in reversed(sorted(predictions.items()))
    ]
    write_tsv(samples, folder / "preds.tsv")
    (folder / "scores.json").write_text(json.dumps({"wer": wer, "cer": cer, "samples": len(samples)}) + "\n")
    return folder


def compare(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPARE), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_examples_then_one_line_per_evaluation(tmp_path):
    before = evaluation(tmp_path / "zs", 1.3846, 0.72375, {"a": "La panna", "b": "Hoant a me a me", "c": "Kenavo"})
    after = evaluation(
        tmp_path / "ft", 0.8205, 0.2873, {"a": "demat deoc'h", "b": "c'hoant am eus da zebriñ", "c": "kenavo"}
    )
    result = compare(f"zero-shot={before}", f"fine-tuned={after}", "--examples", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "a",
        "   reference: Demat deoc'h!",
        "   zero-shot: La panna",
        "  fine-tuned: demat deoc'h",
        "b",
        "   reference: C'hoant am eus da zebriñ.",
        "   zero-shot: Hoant a me a me",
        "  fine-tuned: c'hoant am eus da zebriñ",
        "zero-shot: WER 1.3846 CER 0.7238",
        "fine-tuned: WER 0.8205 CER 0.2873",
    ]


def test_a_missing_evaluation_is_one_line(tmp_path):
    result = compare(f"zero-shot={tmp_path / 'nothing'}")
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr == f"error: {tmp_path / 'nothing' / 'scores.json'}: missing (launch/evaluate.py --output "
        f"{tmp_path / 'nothing' / 'preds.tsv'} > {tmp_path / 'nothing' / 'scores.json'} writes it)\n"
    )
    assert compare("no-equals-sign").returncode == 2

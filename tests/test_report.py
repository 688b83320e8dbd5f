"""The TSV / Markdown files evaluate.py writes (the per-sample scores themselves: tests/test_scoring.py)."""

from __future__ import annotations

from wdsbr.report import write_markdown, write_tsv
from wdsbr.scoring import Prediction, score_samples
from wdsbr.text import clean_text

RESULTS = [
    Prediction("a", "Demat, Yann!", "mat demat yan"),  # 1 insertion + 1 substitution / 2 words
    Prediction("b", "C’hoant am eus", "c'hoant am eus"),  # perfect
    Prediction("c", "Ur c'hi bras", "ur ki"),  # 1 substitution + 1 deletion / 3 words
    Prediction("d", "?!", "noise"),  # nothing left to score
]


def test_the_tsv_keeps_one_sample_per_line_and_the_report_lists_the_worst(tmp_path):
    samples, errors = score_samples(RESULTS + [Prediction("e", "mat", "mat\tmat\nmat")], clean_text)
    tsv = write_tsv(samples, tmp_path / "preds.tsv")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and all(line.count("\t") == 7 for line in lines)
    assert lines[1].split("\t")[:6] == ["e", "mat", "mat mat mat", "2.000000", "2", "1"]
    assert lines[-1].split("\t")[3] == ""  # unscored: no WER
    report = write_markdown(
        samples, errors, {"model": "m", "data": "d", "wer": 0.5}, tmp_path / "preds.md", worst=2
    ).read_text()
    assert "## The 2 worst samples" in report and "| e | 2.0000 | 2 / 1 |" in report and "| a |" in report
    assert "| c |" not in report.split("## Most frequent")[0]
    assert "| 1 | yann | yan |" in report

"""Per-sample scores from one word alignment, worst first, and the TSV / Markdown files evaluate.py writes."""

from __future__ import annotations

import math

from wdsbr.evaluation import Prediction, score
from wdsbr.report import score_samples, write_markdown, write_tsv
from wdsbr.text import clean_text

RESULTS = [
    Prediction("a", "Demat, Yann!", "mat demat yan"),      # 1 insertion + 1 substitution / 2 words
    Prediction("b", "C’hoant am eus", "c'hoant am eus"),  # perfect
    Prediction("c", "Ur c'hi bras", "ur ki"),              # 1 substitution + 1 deletion / 3 words
    Prediction("d", "?!", "noise"),                        # nothing left to score
]


def test_each_sample_is_scored_on_normalised_text_worst_first_and_adds_up_to_the_corpus_wer():
    samples, errors = score_samples(RESULTS, clean_text)
    assert [(s.key, s.errors, s.reference_words) for s in samples] == [("a", 2, 2), ("c", 2, 3), ("b", 0, 3), ("d", 0, 0)]
    assert [s.wer for s in samples[:3]] == [1.0, 2 / 3, 0.0] and math.isnan(samples[3].wer)
    assert (samples[0].reference, samples[0].raw_reference) == ("demat yann", "Demat, Yann!")
    assert sum(s.errors for s in samples) / sum(s.reference_words for s in samples) == score(RESULTS, clean_text)["wer"]
    assert errors.substitutions == {("yann", "yan"): 1, ("c'hi", "ki"): 1}  # word by word
    assert errors.insertions == {"mat": 1} and errors.deletions == {"bras": 1}
    silent, _ = score_samples([Prediction("x", "mat bras", "")], clean_text)  # nothing predicted: all deleted
    assert (silent[0].errors, silent[0].wer) == (2, 1.0)


def test_the_tsv_keeps_one_sample_per_line_and_the_report_lists_the_worst(tmp_path):
    samples, errors = score_samples(RESULTS + [Prediction("e", "mat", "mat\tmat\nmat")], clean_text)
    tsv = write_tsv(samples, tmp_path / "preds.tsv")
    lines = tsv.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and all(line.count("\t") == 7 for line in lines)
    assert lines[1].split("\t")[:6] == ["e", "mat", "mat mat mat", "2.000000", "2", "1"]
    assert lines[-1].split("\t")[3] == ""  # unscored: no WER
    report = write_markdown(samples, errors, {"model": "m", "data": "d", "wer": 0.5}, tmp_path / "preds.md", worst=2).read_text()
    assert "## The 2 worst samples" in report and "| e | 2.0000 | 2 / 1 |" in report and "| a |" in report
    assert "| c |" not in report.split("## Most frequent")[0]
    assert "| 1 | yann | yan |" in report

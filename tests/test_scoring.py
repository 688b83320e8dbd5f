"""wdsbr.scoring: corpus-level WER/CER on normalised text, every labelled number of an evaluation from one call,
per-sample errors that add up to the corpus WER, and resolving `--text-normalizer`."""

from __future__ import annotations

import math

import pytest

from wdsbr import breton
from wdsbr.scoring import SCORE_KEYS, Prediction, load_normalizer, score, score_all, score_samples
from wdsbr.text import clean_text


@pytest.fixture()
def anaouder():
    return pytest.importorskip("anaouder.text", reason=f"anaouder is not installed ({breton.INSTALL})")


# --- corpus-level scores ----------------------------------------------------------------------------------


def test_wer_and_cer_are_corpus_level_after_normalisation():
    results = [
        Prediction("a", "Demat, Yann!", "demat yann"),  # 0 errors / 2 words once cleaned
        Prediction("b", "C’hoant am eus", "c'hoant am"),  # 1 deletion / 3 words
        Prediction("c", "Ur c'hi bras", "ur ki bras mat"),  # 1 substitution + 1 insertion / 3 words
    ]
    scores = score(results, clean_text)
    assert scores["wer"] == pytest.approx(3 / 8)  # total errors / total reference words, not a mean of rates
    assert (scores["substitutions"], scores["deletions"], scores["insertions"]) == (1, 1, 1)
    assert scores["samples"] == 3 and scores["reference_words"] == 8
    reference_chars = len("demat yann") + len("c'hoant am eus") + len("ur c'hi bras")
    char_errors = 0 + len(" eus") + (3 + len(" mat"))  # "c'hi" -> "ki": 1 substitution + 2 deletions
    assert scores["cer"] == pytest.approx(char_errors / reference_chars)


def test_references_that_normalise_to_nothing_are_left_out_and_counted():
    scores = score([Prediction("a", "!!!", "x"), Prediction("b", "mat", "mat")], clean_text)
    assert (scores["wer"], scores["samples"], scores["empty_references"]) == (0.0, 1, 1)
    assert math.isnan(score([Prediction("a", "?", "")], clean_text)["wer"])


# --- every labelled number, from one call -------------------------------------------------------------------

BRETON_RESULTS = [
    Prediction("1", "C’hwi a zo 3 bugel.", "c'hwi a zo tri bugel"),
    Prediction("2", "Demat, Yann-Vari!", "demat yann vari"),
    Prediction("3", "Setu 2 vloaz.", "setu daou bloaz"),
]


def test_scores_label_each_number_with_the_normaliser_that_made_it(anaouder):
    scores = score_all(BRETON_RESULTS, "breton")
    # raw: whitespace words as written. 3 substitutions (C’hwi, 3, bugel.) + 2 substitutions and 1 insertion
    # (Demat, / Yann-Vari! against demat yann vari) + 3 substitutions, over 5 + 2 + 3 reference words
    assert scores["wer_raw"] == pytest.approx(9 / 10)
    # breton + clean-up: "c'hwi a zo tri bugel" / "demat yann vari" (hyphen to space) / "setu daou vloaz":
    # only vloaz -> bloaz is wrong: 1 of 11 words, 1 of 50 characters (spaces count)
    assert scores["wer_normalized"] == pytest.approx(1 / 11)
    assert scores["cer_normalized"] == pytest.approx(1 / 50)
    # Whisper's BasicTextNormalizer splits at apostrophes and keeps digits: "c hwi a zo 3 bugel" vs
    # "c hwi a zo tri bugel" (1 of 6), "demat yann vari" (0 of 3), "setu 2 vloaz" vs "setu daou bloaz" (2 of 3)
    assert scores["wer_whisper_basic"] == pytest.approx(3 / 12)
    assert scores["samples_normalized"] == 3
    assert scores["normalizers"] == {
        "wer_raw": "none",
        "wer_normalized": "breton + breton-scoring (numbers spelled out by anaouder 1.0.5)",
        "cer_normalized": "breton + breton-scoring (numbers spelled out by anaouder 1.0.5)",
        "wer_whisper_basic": "whisper-basic (transformers BasicTextNormalizer)",
    }


def test_scores_without_anaouder_say_numbers_were_not_spelled_out(monkeypatch):
    monkeypatch.setattr(breton, "anaouder_version", lambda: None)
    scores = score_all(BRETON_RESULTS, "default")
    # default + clean-up: "c'hwi a zo 3 bugel" vs "... tri ...", "demat yann vari", "setu 2 vloaz" vs "setu daou bloaz"
    assert scores["wer_normalized"] == pytest.approx(3 / 11)
    assert scores["wer_raw"] == pytest.approx(9 / 10)
    assert (
        scores["normalizers"]["wer_normalized"]
        == "default + breton-scoring (numbers not spelled out: anaouder is not installed)"
    )


def test_scores_use_the_evaluation_prediction_type_and_skip_empty_references(anaouder):
    results = [Prediction("a", "Demat!", "demat"), Prediction("b", "…", "hm")]
    scores = score_all(results, "default")
    assert scores["wer_normalized"] == 0.0  # "…" cleans to nothing: left out of the normalised numbers
    assert scores["samples_normalized"] == 1
    assert scores["empty_references_by_normalizer"] == {"wer_raw": 0, "wer_normalized": 1, "wer_whisper_basic": 1}
    assert scores["wer_raw"] == 1.0  # raw keeps it: "Demat!" vs "demat" and "…" vs "hm", 2 errors in 2 words


def test_one_call_holds_the_trainers_own_scores_unchanged_and_every_labelled_number(anaouder):
    scores = score(BRETON_RESULTS, clean_text)
    merged = score_all(BRETON_RESULTS, "default")
    assert {name: merged[name] for name in scores} == scores
    assert set(SCORE_KEYS) <= set(merged) and all(name in merged["normalizers"] for name in SCORE_KEYS)


# --- per sample ---------------------------------------------------------------------------------------------

SAMPLES = [
    Prediction("a", "Demat, Yann!", "mat demat yan"),  # 1 insertion + 1 substitution / 2 words
    Prediction("b", "C’hoant am eus", "c'hoant am eus"),  # perfect
    Prediction("c", "Ur c'hi bras", "ur ki"),  # 1 substitution + 1 deletion / 3 words
    Prediction("d", "?!", "noise"),  # nothing left to score
]


def test_each_sample_is_scored_on_normalised_text_worst_first_and_adds_up_to_the_corpus_wer():
    samples, errors = score_samples(SAMPLES, clean_text)
    assert [(s.key, s.errors, s.reference_words) for s in samples] == [
        ("a", 2, 2),
        ("c", 2, 3),
        ("b", 0, 3),
        ("d", 0, 0),
    ]
    assert [s.wer for s in samples[:3]] == [1.0, 2 / 3, 0.0] and math.isnan(samples[3].wer)
    assert (samples[0].reference, samples[0].raw_reference) == ("demat yann", "Demat, Yann!")
    assert sum(s.errors for s in samples) / sum(s.reference_words for s in samples) == score(SAMPLES, clean_text)["wer"]
    assert errors.substitutions == {("yann", "yan"): 1, ("c'hi", "ki"): 1}  # word by word
    assert errors.insertions == {"mat": 1} and errors.deletions == {"bras": 1}
    silent, _ = score_samples([Prediction("x", "mat bras", "")], clean_text)  # nothing predicted: all deleted
    assert (silent[0].errors, silent[0].wer) == (2, 1.0)


# --- --text-normalizer ----------------------------------------------------------------------------------------


def test_default_normalizer_is_clean_text():
    assert load_normalizer(None) is clean_text
    assert load_normalizer("default") is clean_text


def test_module_function_normalizer_is_imported():
    assert load_normalizer("string:capwords")("a b") == "A B"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon", "module:function"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("string:no_such_function", "no callable"),
    ],
)
def test_bad_normalizer_spec_is_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_normalizer(spec)

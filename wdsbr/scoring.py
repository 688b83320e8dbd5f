"""Scoring: every WER/CER number an evaluation reports, and the `--text-normalizer` table that names them.

One call, `score_all(results, normalizer_spec)`, gives the trainer's eval rows and `launch/evaluate.py`'s JSON
the same numbers from the same predictions:

- `wer`, `cer`, `samples`: corpus-level, after the `--text-normalizer` (`load_normalizer`);
- `wer_raw`: no normalisation at all (words are whitespace-separated tokens, case and punctuation count);
- `wer_normalized`, `cer_normalized`: the `--text-normalizer`, then the Breton scoring clean-up
  (`wdsbr.breton.scoring_cleanup`), numbers spelled out when anaouder is installed;
- `wer_whisper_basic`: `transformers`' Whisper `BasicTextNormalizer`, as in Whisper papers (it splits words at
  apostrophes: "c'hoant" -> "c hoant");
- `normalizers`: which normaliser made each of the four labelled numbers (`wer`/`cer` are the `normalizer`'s).

Corpus-level means total errors over total reference words (characters for CER); references that a
normaliser leaves empty are left out of its numbers and counted. `score_samples` gives the per-sample errors
from one jiwer alignment of the same normalised text, so they add up to the corpus WER.

Imports: `wdsbr.text` and `wdsbr.breton` (basics) only; no torch, so scoring runs anywhere.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jiwer
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from wdsbr import breton
from wdsbr.text import clean_text

# The labelled numbers `score_all` adds to `wer`/`cer` (names that never collide with `score`'s).
SCORE_KEYS = ("wer_raw", "wer_normalized", "cer_normalized", "wer_whisper_basic")
# --text-normalizer by name: each entry returns the normaliser, or raises ValueError saying what to install.
NORMALIZERS: dict[str, Callable[[], Callable[[str], str]]] = {
    "default": lambda: clean_text,
    "clean_text": lambda: clean_text,
    "breton": breton.load_breton_normalizer,  # anaouder, imported only when asked for
}


@dataclass
class Prediction:
    key: str
    reference: str  # the raw transcript from the shard
    prediction: str  # the decoded text, special tokens removed


def load_normalizer(spec: str | None) -> Callable[[str], str]:
    """Resolve `--text-normalizer`: None or a name in `NORMALIZERS` ("default" is `clean_text`, "breton" the
    Breton community's normaliser), or "module:function", which imports that callable.

    Raises ValueError with a one-line explanation when the spec cannot be resolved (for "breton" without
    anaouder: the command that installs it)."""
    if spec is None or spec == "":
        return clean_text
    if spec in NORMALIZERS:
        return NORMALIZERS[spec]()
    if ":" not in spec:
        raise ValueError(
            f"--text-normalizer {spec!r}: expected 'default', 'breton' or 'module:function' (e.g. mypkg.text:normalise)"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--text-normalizer {spec!r}: cannot import module {module_name!r} ({error})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"--text-normalizer {spec!r}: module {module_name!r} has no callable {attr!r}")
    return function


def score(results: Iterable[Prediction], normalize: Callable[[str], str]) -> dict[str, Any]:
    """Corpus-level WER and CER (total errors / total reference words or characters) after `normalize`.
    References that normalise to nothing are left out and counted."""
    pairs = [(normalize(r.reference), normalize(r.prediction)) for r in results]
    kept = [(ref, hyp) for ref, hyp in pairs if ref]
    if not kept:
        return {"wer": math.nan, "cer": math.nan, "samples": 0, "empty_references": len(pairs)}
    references, hypotheses = [ref for ref, _ in kept], [hyp for _, hyp in kept]
    words = jiwer.process_words(references, hypotheses)
    chars = jiwer.process_characters(references, hypotheses)
    return {
        "wer": words.wer,
        "cer": chars.cer,
        "samples": len(kept),
        "empty_references": len(pairs) - len(kept),
        "reference_words": sum(len(ref.split()) for ref in references),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
    }


def score_all(results: Iterable[Any], normalizer_spec: str | None = "default") -> dict[str, Any]:
    """Every number an evaluation reports for these predictions (anything with `.reference`, `.prediction`):
    `score`'s keys for the `--text-normalizer`, the `SCORE_KEYS`, `samples_normalized`,
    `empty_references_by_normalizer` and `normalizers` (what made each labelled number)."""
    results = list(results)
    normalize = load_normalizer(normalizer_spec)
    version = breton.anaouder_version()
    name = normalizer_spec or "default"
    cleanup = (
        f"breton-scoring (numbers spelled out by anaouder {version})"
        if version
        else "breton-scoring (numbers not spelled out: anaouder is not installed)"
    )
    whisper_basic = BasicTextNormalizer()
    scores = score(results, normalize)
    raw = score(results, lambda text: text)
    normalized = score(
        results, lambda text: breton.scoring_cleanup(normalize(text), verbalize_numbers=version is not None)
    )
    basic = score(results, lambda text: " ".join(whisper_basic(text).split()))  # it leaves spaces where symbols were
    return {
        **scores,
        "wer_raw": raw["wer"],
        "wer_normalized": normalized["wer"],
        "cer_normalized": normalized["cer"],
        "wer_whisper_basic": basic["wer"],
        "samples_normalized": normalized["samples"],
        "empty_references_by_normalizer": {
            "wer_raw": raw["empty_references"],
            "wer_normalized": normalized["empty_references"],
            "wer_whisper_basic": basic["empty_references"],
        },
        "normalizers": {
            "wer_raw": "none",
            "wer_normalized": f"{name} + {cleanup}",
            "cer_normalized": f"{name} + {cleanup}",
            "wer_whisper_basic": "whisper-basic (transformers BasicTextNormalizer)",
        },
    }


# ------------------------------------------------------------------------------------------------ per sample
@dataclass
class SampleScore:
    key: str
    reference: str  # normalised, as scored
    prediction: str  # normalised, as scored
    wer: float  # errors / reference words; NaN when the reference normalises to nothing (not scored)
    errors: int  # substitutions + deletions + insertions
    reference_words: int
    raw_reference: str
    raw_prediction: str


@dataclass
class WordErrors:
    """How often each word error occurs over the whole set."""

    substitutions: Counter  # (reference word, predicted word) -> count
    deletions: Counter  # reference word -> count
    insertions: Counter  # predicted word -> count


def score_samples(
    results: Iterable[Prediction], normalize: Callable[[str], str]
) -> tuple[list[SampleScore], WordErrors]:
    """Every sample's WER from one alignment of the normalised texts, sorted worst first (most errors next,
    then key); samples whose reference normalises to nothing come last with WER NaN."""
    results = list(results)
    pairs = [(normalize(r.reference), normalize(r.prediction)) for r in results]
    scored = [i for i, (reference, _) in enumerate(pairs) if reference]
    samples = [
        SampleScore(r.key, ref, hyp, math.nan, 0, 0, r.reference, r.prediction) for r, (ref, hyp) in zip(results, pairs)
    ]
    errors = WordErrors(Counter(), Counter(), Counter())
    if scored:
        output = jiwer.process_words([pairs[i][0] for i in scored], [pairs[i][1] for i in scored])
        for i, words, predicted, alignment in zip(scored, output.references, output.hypotheses, output.alignments):
            edits = 0
            for chunk in alignment:  # word by word: jiwer's own counts join a chunk's words into one phrase
                reference = words[chunk.ref_start_idx : chunk.ref_end_idx]
                prediction = predicted[chunk.hyp_start_idx : chunk.hyp_end_idx]
                if chunk.type == "substitute":
                    errors.substitutions.update(zip(reference, prediction))
                elif chunk.type == "delete":
                    errors.deletions.update(reference)
                elif chunk.type == "insert":
                    errors.insertions.update(prediction)
                edits += 0 if chunk.type == "equal" else max(len(reference), len(prediction))
            samples[i].errors, samples[i].reference_words, samples[i].wer = edits, len(words), edits / len(words)
    samples.sort(key=lambda s: (math.isnan(s.wer), -s.wer if not math.isnan(s.wer) else 0.0, -s.errors, s.key))
    return samples, errors

"""Breton: the Breton community's text normaliser as `--text-normalizer breton`, and the clean-up Breton ASR is
scored with.

The normaliser is `anaouder.text` (MIT, Gweltaz Duval-Guennoc, https://github.com/gweltou/vosk-br): numbers,
ordinals, Roman numerals, times, percentages and units spelled out in Breton, with the noun placed and mutated
as Breton counts (`"75 bloaz"` -> `"pemzek bloaz ha tri-ugent"`), and its spelling corrections. anaouder is
optional and imported only here, only when asked for: its declared requirements (vosk, sounddevice, a pinned
tqdm, ...) clash with this project's, so it is installed without them (`INSTALL`); its text part needs only
`sentence-splitter` and `colorama` (the `breton` extra).

`scoring_cleanup` is what `wdsbr.scoring.score_all` applies for `wer_normalized`/`cer_normalized`. This module
imports only `wdsbr.text`: it is unpickled in every DataLoader worker and must stay light (no torch).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from wdsbr.text import clean_text, unify_marks

ANAOUDER_VERSION = "1.0.5"  # the version the tests' expected strings were checked against
INSTALL = f"pip install -e '.[breton]' && pip install --no-deps anaouder=={ANAOUDER_VERSION}"
_DIGIT = re.compile(r"\d")
_SCORING_SPLITS = re.compile(r"[-/\u00a0]")  # hyphens, slashes and no-break spaces separate words when scoring


class MissingAnaouder(ImportError):
    """anaouder (or a module its text part needs) is not installed; the message names the install command."""


@cache
def _anaouder_text():
    """`anaouder.text`, imported once. Its import prints "Missing dictionary file ..." for two optional
    dictionaries its wheel does not ship; that noise is swallowed, any real failure is raised."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import anaouder.text as anaouder_text
    except ImportError as error:
        raise MissingAnaouder(f"the Breton normaliser needs anaouder ({error}); install it with: {INSTALL}") from None
    return anaouder_text


def anaouder_version() -> str | None:
    """The installed anaouder version, or None when it cannot be imported."""
    try:
        _anaouder_text()
    except MissingAnaouder:
        return None
    try:
        return version("anaouder")
    except PackageNotFoundError:
        return "unknown"


def load_breton_normalizer() -> Callable[[str], str]:
    """`normalize_breton`, after checking anaouder imports: a ValueError naming the install command otherwise
    (what `wdsbr.scoring.load_normalizer("breton")` turns into the CLIs' one-line error)."""
    try:
        _anaouder_text()
    except MissingAnaouder as error:
        raise ValueError(f"--text-normalizer breton: {error}") from None
    return normalize_breton


def verbalize(text: str, *, autocorrect: bool = True) -> str:
    """Spell out numbers, ordinals, Roman numerals, times, percentages and units the way anaouder's dataset
    preparation does (its `pre_process`, `tokenize(autocorrect=True)`, `normalize(norm_case=True)`,
    `detokenize`): lower case except proper nouns, punctuation kept. `autocorrect` also applies anaouder's
    spelling corrections (its corrected_tokens.tsv: "aman" -> "amañ", "araok" -> "a-raok").

    anaouder raises on some inputs (a Roman numeral outside its table such as "XXXIX" is a KeyError); then
    each whitespace-separated chunk is normalised on its own and a chunk that still fails is kept as written,
    so one odd token never stops a training run.
    """
    anaouder = _anaouder_text()

    def one(chunk: str) -> str:
        tokens = anaouder.tokenize(anaouder.pre_process(chunk), autocorrect=autocorrect, norm_punct=False)
        return anaouder.detokenize(anaouder.normalize(tokens, norm_case=True), normalize=True, capitalize=False)

    text = unify_marks(text)
    try:
        return one(text)
    except Exception:  # anaouder's own failures (KeyError, ValueError, IndexError, ...) on one sentence
        pieces = []
        for chunk in text.split():
            try:
                pieces.append(one(chunk))
            except Exception:  # this chunk only: kept as written
                pieces.append(chunk)
        return " ".join(pieces)


def normalize_breton(text: str) -> str:
    """The `breton` normaliser for labels and scoring: anaouder's verbalisation and spelling corrections,
    then `clean_text` (lower case, punctuation out, apostrophes and hyphens inside a word kept).

    >>> normalize_breton("E 1998 e oa 25% eus an dud.")
    "e mil nav c'hant triwec'h ha pevar-ugent e oa pemp warn-ugent dre gant eus an dud"
    """
    return clean_text(verbalize(text))


def scoring_cleanup(text: str, *, verbalize_numbers: bool) -> str:
    """The clean-up Breton ASR is scored with (anaouder's dataset preparation): apostrophe variants unified,
    numbers spelled out (when `verbalize_numbers`; spelling is left alone, that is the normaliser's choice),
    lower case, hyphens and slashes to spaces, punctuation removed but apostrophes inside a word kept (c'h, n'eo)."""
    text = unify_marks(text)
    if verbalize_numbers and _DIGIT.search(text):
        text = verbalize(text, autocorrect=False)
    return clean_text(_SCORING_SPLITS.sub(" ", text))

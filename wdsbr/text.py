"""Transcript cleaning: the default Breton-aware `clean_text` and the mark folding every normaliser starts with.

Raw text stays in the shards; cleaning happens when labels are built and when WER is scored, so a new
normaliser needs no re-sharding. This module is a leaf (no wdsbr import): `--text-normalizer` names are
resolved by `wdsbr.scoring.load_normalizer` (`default` is `clean_text`, `breton` is `wdsbr.breton`'s,
`module:function` any callable).
"""

from __future__ import annotations

import re
import unicodedata

# Every apostrophe look-alike a Breton transcript is typed with, folded to ASCII "'":
# ’ (U+2019) ‘ (U+2018) ʼ (U+02BC) ´ (U+00B4) ` (U+0060) ′ (U+2032) ʹ (U+02B9) ＇ (U+FF07)
_APOSTROPHES = re.compile("[\u2019\u2018\u02bc\u00b4\u0060\u2032\u02b9\uff07]")
# Hyphen look-alikes folded to ASCII "-": ‐ ‑ (U+2010, U+2011). Dashes (– —) are punctuation, removed.
_HYPHENS = re.compile("[\u2010\u2011]")
# A token is a run of letters/digits, joined by single apostrophes or hyphens *inside* the word:
# "c'hoant", "war-lerc'h", "d'ar" stay whole; a leading/trailing quote or hyphen is punctuation.
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def clean_text(text: str) -> str:
    """Normalise a transcript for labels and scoring.

    NFC, apostrophe variants to "'", lower case, punctuation removed except apostrophes and hyphens inside
    a word (so the digraphs c'h and ch survive), whitespace collapsed.

    >>> clean_text("C’hoant am eus!")
    "c'hoant am eus"
    >>> clean_text("Demat, Yann!")
    'demat yann'
    """
    text = unicodedata.normalize("NFC", text)
    text = _APOSTROPHES.sub("'", text)
    text = _HYPHENS.sub("-", text)
    text = text.lower()
    return " ".join(_WORD.findall(text))


def unify_marks(text: str) -> str:
    """NFC, every apostrophe variant to "'" and hyphen look-alikes to "-"; case and punctuation are left alone.

    >>> unify_marks("C‘hoant am eus ’vat")
    "C'hoant am eus 'vat"
    """
    text = unicodedata.normalize("NFC", text)
    return _HYPHENS.sub("-", _APOSTROPHES.sub("'", text))


def plural(count: int, noun: str) -> str:
    """`1 shard`, `3 shards`: a count and its noun, for the lines the tools print."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

"""clean_text: the Breton-aware default normaliser (resolving --text-normalizer: tests/test_scoring.py)."""

import pytest

from wdsbr.text import clean_text


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("C’hoant", "c'hoant"),
        ("Demat, Yann!", "demat yann"),
        ("C‘hwi ʼzo ´mat` ?", "c'hwi zo mat"),  # every apostrophe variant folds to '
        ("War-lerc'h e-barzh", "war-lerc'h e-barzh"),  # word-internal hyphens and apostrophes stay
        ("Ur chadenn, ur c'hi.", "ur chadenn ur c'hi"),  # ch and c'h digraphs stay
        ("  Pegeit   e vo ar vaez\u00a0?\n", "pegeit e vo ar vaez"),  # whitespace collapsed
        ("« Kenavo » — emezañ ; (mat) ‘ya’", "kenavo emezañ mat ya"),  # quotes used as quotes are punctuation
        ("E 1998 e oa 25% eus an dud.", "e 1998 e oa 25 eus an dud"),
        ("- ar ti -", "ar ti"),  # a hyphen standing alone is punctuation
        ("e\u0301ost", "éost"),  # NFC: e + combining acute -> é
        ("ÑU ÙR", "ñu ùr"),
    ],
)
def test_clean_text_cases(raw, cleaned):
    assert clean_text(raw) == cleaned


def test_clean_text_is_idempotent():
    text = "C’hoant am eus da zebriñ, war-lerc'h ar glav!"
    assert clean_text(clean_text(text)) == clean_text(text)

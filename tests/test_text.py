"""clean_text: the Breton-aware default normaliser, and loading a replacement with module:function."""

import pytest

from wdsbr.text import clean_text, load_normalizer


@pytest.mark.parametrize("raw, cleaned", [
    ("C’hoant", "c'hoant"),
    ("Demat, Yann!", "demat yann"),
    ("C‘hwi ʼzo ´mat` ?", "c'hwi zo mat"),                    # every apostrophe variant folds to '
    ("War-lerc'h e-barzh", "war-lerc'h e-barzh"),             # word-internal hyphens and apostrophes stay
    ("Ur chadenn, ur c'hi.", "ur chadenn ur c'hi"),           # ch and c'h digraphs stay
    ("  Pegeit   e vo ar vaez\u00a0?\n", "pegeit e vo ar vaez"),  # whitespace collapsed
    ("« Kenavo » — emezañ ; (mat) ‘ya’", "kenavo emezañ mat ya"),  # quotes used as quotes are punctuation
    ("E 1998 e oa 25% eus an dud.", "e 1998 e oa 25 eus an dud"),
    ("- ar ti -", "ar ti"),                                   # a hyphen standing alone is punctuation
    ("e\u0301ost", "éost"),                                   # NFC: e + combining acute -> é
    ("ÑU ÙR", "ñu ùr"),
])
def test_clean_text_cases(raw, cleaned):
    assert clean_text(raw) == cleaned


def test_clean_text_is_idempotent():
    text = "C’hoant am eus da zebriñ, war-lerc'h ar glav!"
    assert clean_text(clean_text(text)) == clean_text(text)


def test_default_normalizer_is_clean_text():
    assert load_normalizer(None) is clean_text
    assert load_normalizer("default") is clean_text


def test_module_function_normalizer_is_imported():
    assert load_normalizer("string:capwords")("a b") == "A B"


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "module:function"),
    ("no_such_module_xyz:f", "cannot import module"),
    ("string:no_such_function", "no callable"),
])
def test_bad_normalizer_spec_is_one_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_normalizer(spec)

"""wdsbr.breton: the Breton community's normaliser (anaouder) as `--text-normalizer breton`, and the scoring clean-up.

Expected strings are anaouder 1.0.5's output, each checked by hand as correct Breton: numbers take the
feminine (peder plac'h) and put the counted noun after the first element (pemzek bloaz ha tri-ugent = 75
years), percentages are "dre gant", ordinals kentañ/eilvet/trede/pevare, times "eizh eur hanter".
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import write_speech_corpus

from wdsbr import breton
from wdsbr.scoring import load_normalizer
from wdsbr.text import clean_text

# (written, normalised by the breton normaliser)
BRETON = [
    ("c'hwi a zo 3 bugel", "c'hwi a zo tri bugel"),
    (
        "E 1998 e oa 25% eus an dud.",
        "e mil nav c'hant triwec'h ha pevar-ugent e oa pemp warn-ugent dre gant eus an dud",
    ),  # year, percentage
    ("Ar 1añ a viz Du", "ar kentañ a viz du"),  # ordinal in a date
    ("d’ar 15 a viz Gouere 2024", "d'ar pemzek a viz gouere daou vil pevar warn-ugent"),  # date, ’
    (
        "Ganet e oa d’an 11 a viz Here 1950 e Kemper.",
        "ganet e oa d'an unnek a viz here mil nav c'hant hanter-kant e kemper",
    ),
    ("An 2vet, an 3de hag ar 4re", "an eilvet an trede hag ar pevare"),  # ordinals
    ("Er XIXvet kantved", "er naontekvet kantved"),  # Roman ordinal
    ("Da 8e30 e vo", "da eizh eur hanter e vo"),  # time
    ("Ma mamm-gozh a oa 90 vloaz", "ma mamm-gozh a oa dek vloaz ha pevar-ugent"),  # noun inside the number
    ("75 bloaz", "pemzek bloaz ha tri-ugent"),
    ("Bez ez eus 4 plac’h", "bez ez eus peder plac'h"),  # feminine four
    ("Bremañ ez eus 3 000 a dud", "bremañ ez eus tri mil a dud"),  # thousands separator
    ("5 km", "pemp kilometr"),  # unit
    ("Ur c‘hi, ur c′hazh", "ur c'hi ur c'hazh"),  # apostrophe look-alikes ‘ ′ in the c'h digraph
    ("N’eo ket, nʼeo ket!", "n'eo ket n'eo ket"),  # ’ and ʼ
    ("Jean-Pierre a zo e Pont-Aven", "jean-pierre a zo e pont-aven"),  # hyphenated names kept whole
    ("Mont a ra war-lerc’h e vreur Yann-Vari.", "mont a ra war-lerc'h e vreur yann-vari"),
    ("“Demat!” emezañ.", "demat emezañ"),
]


@pytest.fixture()
def anaouder():
    return pytest.importorskip("anaouder.text", reason=f"anaouder is not installed ({breton.INSTALL})")


# --- the normaliser ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("written, expected", BRETON, ids=[written for written, _ in BRETON])
def test_breton_normaliser_spells_out_numbers_dates_ordinals_and_keeps_breton_words(anaouder, written, expected):
    assert breton.normalize_breton(written) == expected


def test_text_normalizer_breton_resolves_to_the_anaouder_normaliser(anaouder):
    normalize = load_normalizer("breton")
    assert normalize is breton.normalize_breton
    assert normalize("c'hwi a zo 3 bugel") == "c'hwi a zo tri bugel"
    assert load_normalizer("default") is clean_text  # the dependency-free default is unchanged


def test_breton_output_is_already_clean_and_normalising_twice_changes_nothing(anaouder):
    for _written, expected in BRETON:
        assert clean_text(expected) == expected
        assert breton.normalize_breton(expected) == expected


def test_a_token_anaouder_cannot_read_is_kept_and_the_rest_still_spelled_out(anaouder):
    with pytest.raises(KeyError):  # anaouder's Roman numeral table stops at XXXV
        anaouder.normalize_sentence("Louis XXXIX e 1789")
    assert breton.normalize_breton("Louis XXXIX e 1789.") == "louis xxxix e mil seizh kant nav ha pevar-ugent"


def test_without_anaouder_the_breton_normaliser_is_one_line_naming_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "anaouder", None)  # import anaouder -> ImportError
    monkeypatch.setitem(sys.modules, "anaouder.text", None)
    breton._anaouder_text.cache_clear()
    try:
        with pytest.raises(ValueError) as error:
            load_normalizer("breton")
        message = str(error.value)
        assert message.startswith("--text-normalizer breton: the Breton normaliser needs anaouder")
        assert "pip install --no-deps anaouder==" in message and "'.[breton]'" in message and "\n" not in message
        assert breton.anaouder_version() is None
    finally:
        breton._anaouder_text.cache_clear()


def test_breton_normaliser_builds_labels_behind_the_br_transcribe_prompt(anaouder, tmp_path, tiny_processor):
    """Through the real loader (1 DataLoader worker, so the normaliser is pickled): the labels are
    <|br|><|transcribe|><|notimestamps|> + the spelled-out text + <|endoftext|> (the start token is the model's)."""
    from wdsbr.corpus import open_corpus
    from wdsbr.data import LoaderOptions, make_eval_loader
    from wdsbr.shards import ShardOptions, shard_corpus

    corpus = write_speech_corpus(tmp_path / "corpus", 2)
    (corpus / "spk0" / "utt000.txt").write_text("E 1998 e oa 25% eus an dud.", encoding="utf-8")
    (corpus / "spk1" / "utt001.txt").write_text("Ar 1añ a viz Du", encoding="utf-8")
    shard_corpus(
        open_corpus(corpus),
        tmp_path / "shards",
        ShardOptions(val_fraction=0, test_fraction=0, workers=1),
        progress=False,
    )
    tokenizer = tiny_processor.tokenizer
    loader = make_eval_loader(
        tmp_path / "shards" / "train",
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=80,
            micro_batch_size=2,
            num_workers=1,
            normalize=load_normalizer("breton"),
        ),
    )
    (batch,) = list(loader)
    labels = {
        key: [token for token in row.tolist() if token != -100] for key, row in zip(batch["keys"], batch["labels"])
    }
    for key, expected in (("spk0__utt000", BRETON[1][1]), ("spk1__utt001", "ar kentañ a viz du")):
        tokens = tokenizer.convert_ids_to_tokens(labels[key])
        assert tokens[:3] == ["<|br|>", "<|transcribe|>", "<|notimestamps|>"] and tokens[-1] == "<|endoftext|>"
        assert tokenizer.decode(labels[key][3:-1]) == expected


# --- the scoring clean-up (the scores themselves: tests/test_scoring.py) -------------------------------------


def test_breton_scoring_cleanup_splits_hyphens_keeps_inner_apostrophes_and_spells_numbers(anaouder):
    assert (
        breton.scoring_cleanup("Mont a ra war-lerc’h Yann-Vari, d’ar 3 !", verbalize_numbers=True)
        == "mont a ra war lerc'h yann vari d'ar tri"
    )
    assert (
        breton.scoring_cleanup("Mont a ra war-lerc’h, d’ar 3 !", verbalize_numbers=False)
        == "mont a ra war lerc'h d'ar 3"
    )
    # spelling is the normaliser's business: the clean-up does not apply anaouder's corrections (aman -> amañ)
    assert breton.scoring_cleanup("Aman ez eus 3 bugel", verbalize_numbers=True) == "aman ez eus tri bugel"
    assert breton.normalize_breton("Aman ez eus 3 bugel") == "amañ ez eus tri bugel"


def test_the_module_imports_without_anaouder_torch_or_transformers():
    """`load_normalizer` imports wdsbr.breton in every DataLoader worker: it must stay light."""
    import subprocess

    code = (
        "import sys, wdsbr.breton; heavy = {'anaouder', 'torch', 'transformers'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.strip()
    assert out == "[]"

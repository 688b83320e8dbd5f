"""The n-gram language model: estimation checked against KenLM's own estimator, the build tool, and shallow fusion
into generate() on a tiny Whisper (α = 0 is plain beam search; an LM flips a tie)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from wdsbr.evaluation import generate_kwargs, no_timestamps, with_processors
from wdsbr.lm import LMFusion, estimate, load_lm, resolve_weights
from wdsbr.text import clean_text

kenlm = pytest.importorskip("kenlm")

DATA = Path(__file__).parent / "data" / "lm"
ROOT = Path(__file__).resolve().parents[1]


def read_arpa(path: Path) -> dict[int, dict[tuple[str, ...], tuple[float, float | None]]]:
    orders, order = {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1 : line.index("-")])
            orders[order] = {}
        elif order and line and not line.startswith("\\"):
            fields = line.split("\t")
            orders[order][tuple(fields[1].split())] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else None)
    return orders


def test_the_estimate_is_kenlm_lmplz_s_modified_kneser_ney(tmp_path):
    """Every n-gram, probability and backoff of a 3-gram model from 200 Breton sentences equals what lmplz wrote
    from the same text (tests/data/lm/README.md) to float precision, and KenLM scores held-out text alike."""
    sentences = [line.split() for line in (DATA / "sentences.txt").read_text(encoding="utf-8").splitlines()]
    model = estimate(sentences, 3)
    assert model.fallback_orders == []
    reference = read_arpa(DATA / "lmplz-order3.arpa")
    for order in (1, 2, 3):
        mine = model.orders[order - 1]
        assert set(mine) == set(reference[order]), order
        for gram, (probability, backoff) in reference[order].items():
            assert mine[gram][0] == pytest.approx(probability, abs=1e-5), gram
            assert (mine[gram][1] or 0.0) == pytest.approx(backoff or 0.0, abs=1e-5), gram
    model.write(tmp_path / "mine.arpa")
    ours, theirs = kenlm.Model(str(tmp_path / "mine.arpa")), kenlm.Model(str(DATA / "lmplz-order3.arpa"))
    held_out = ["ar c'hi a zo bras", "mont a ra mat ganin hiziv", "n'ouzon ket perak ez eo aet kuit"]
    for sentence in held_out:
        assert ours.perplexity(sentence) == pytest.approx(theirs.perplexity(sentence), rel=1e-5)


def test_small_text_falls_back_to_fixed_discounts_as_lmplz_does():
    model = estimate([["a", "b"], ["a", "c"]], 2)
    assert model.fallback_orders == [1, 2]
    total = sum(10**probability for gram, (probability, _) in model.orders[0].items() if gram != ("<s>",))
    assert total == pytest.approx(1.0, abs=1e-6)  # the unigrams, <unk> and </s> included, are a distribution


def run_build_lm(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_lm.py"), *map(str, args)], capture_output=True, text=True
    )


def test_build_lm_drops_held_out_sentences_and_says_how_many(tmp_path):
    """A text line equal to a validation sentence but for case and punctuation is removed and counted; the
    model loads in KenLM; OUTPUT.json says what it was built from."""
    text = tmp_path / "text.txt"
    text.write_text("Demat, mont a ra mat?\nAr c'hi a zo bras.\nMat eo ar vugale\nAr ferm a zo bras\n\n", "utf-8")
    held_out = tmp_path / "validation.txt"
    held_out.write_text("demat mont a ra mat\n", encoding="utf-8")
    result = run_build_lm(text, "--order", 3, "--output", tmp_path / "lm" / "br.arpa", "--exclude-sentences", held_out)
    assert result.returncode == 0, result.stderr
    assert f"removed 1 lines equal to a sentence of {held_out}" in result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert (info["order"], info["sentences"], info["words"]) == (3, 3, 14)
    assert info["excluded_sentences"]["removed"] == 1
    assert json.loads((tmp_path / "lm" / "br.arpa.json").read_text()) == info
    model = load_lm(tmp_path / "lm" / "br.arpa")
    assert model.order == 3
    assert model.score("ar c'hi a zo bras") > model.score("demat mont a ra mat")  # the held-out line was not read


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.txt"], "missing.txt: no such text file"),
        (["TEXT", "--order", "1"], "--order 1: must be at least 2 (KenLM loads bigram models and up)"),
        (["EMPTY"], "no words to build a language model from"),
    ],
)
def test_build_lm_bad_input_is_one_line(tmp_path, args, message):
    (tmp_path / "text.txt").write_text("a b c\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n ,\n", encoding="utf-8")
    args = [
        str(tmp_path / "text.txt") if a == "TEXT" else str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in args
    ]
    result = run_build_lm(*args, "--output", tmp_path / "lm.arpa")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"] or (
        result.stderr.strip().startswith("error: ") and message in result.stderr and result.stderr.count("\n") == 1
    )
    assert not (tmp_path / "lm.arpa").exists()


def test_a_file_kenlm_cannot_read_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("this is not an ARPA file\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{bad}: not a language model KenLM can load"):
        load_lm(bad)
    with pytest.raises(FileNotFoundError, match="no such language model file"):
        load_lm(tmp_path / "none.arpa")


def test_weights_come_from_the_command_line_then_lm_json_then_defaults(tmp_path):
    assert resolve_weights(tmp_path, None, None) == (0.5, 0.0, "default")
    (tmp_path / "lm.json").write_text(json.dumps({"alpha": 0.8, "beta": 1.5}))
    assert resolve_weights(tmp_path, None, None) == (0.8, 1.5, str(tmp_path / "lm.json"))
    assert resolve_weights(tmp_path, 0.2, None) == (0.2, 1.5, str(tmp_path / "lm.json"))
    assert resolve_weights(tmp_path, 0.2, 0.0) == (0.2, 0.0, "given")
    (tmp_path / "lm.json").write_text("{}")
    with pytest.raises(ValueError, match="not a tools/tune_lm.py settings file"):
        resolve_weights(tmp_path, None, None)


# ------------------------------------------------------------------------------------------------- fusion
@pytest.fixture(scope="module")
def wordy(wordy_whisper):
    from wdsbr.model import load_model, load_processor

    return load_model(wordy_whisper).eval(), load_processor(wordy_whisper, language="br")


def features(processor, clips: int):
    from conftest import speech_like

    audio = [speech_like(1.5 + 0.3 * seed, seed=seed) for seed in range(clips)]
    return processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features


@pytest.fixture(scope="module")
def some_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "br.arpa"
    estimate([line.split() for line in (DATA / "sentences.txt").read_text("utf-8").splitlines()], 3).write(path)
    return load_lm(path)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_alpha_and_beta_zero_decode_exactly_as_plain_search(wordy, some_lm, num_beams):
    model, processor = wordy
    inputs = features(processor, 4)
    kwargs = with_processors(generate_kwargs("br", num_beams, 24), no_timestamps(model))
    plain = model.generate(input_features=inputs, **kwargs)
    fusion = LMFusion(some_lm, processor.tokenizer, clean_text, 0.0, 0.0, num_beams)
    fused = model.generate(input_features=inputs, **with_processors({**kwargs, "logits_processor": [fusion]}, {}))
    assert torch.equal(plain, fused)
    assert fusion.words_scored > 0  # the LM was asked, its weight was nil
    weighted = LMFusion(some_lm, processor.tokenizer, clean_text, 1.0, 0.0, num_beams)
    changed = model.generate(input_features=inputs, **with_processors({**kwargs, "logits_processor": [weighted]}, {}))
    assert not torch.equal(plain, changed)  # the random model's words are not Breton: the LM moves them


class Tie(LogitsProcessor):
    """An acoustic model that can only say `first` or `second` (token lists), `first` a hair likelier."""

    def __init__(self, tokenizer, first: str, second: str):
        self.eos = tokenizer.eos_token_id
        self.options = [
            (tokenizer.encode(text, add_special_tokens=False), bonus) for text, bonus in ((first, 1e-3), (second, 0.0))
        ]

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -math.inf)
        for row, sequence in enumerate(input_ids.tolist()):
            text = [token for token in sequence if token < self.eos]
            for tokens, bonus in self.options:
                if tokens[: len(text)] == text:
                    out[row, tokens[len(text)] if len(text) < len(tokens) else self.eos] = math.log(0.5) + bonus
        return out


def test_a_language_model_that_prefers_one_of_two_tied_transcripts_flips_the_output(wordy, tmp_path):
    """Acoustically `... bras` and `... braz` tie (the first by a hair): plain beam search says the first; fused with
    an LM that has only read the second, the search says the second; a tiny α leaves the tie to the acoustics."""
    model, processor = wordy
    tokenizer = processor.tokenizer
    first, second = " demat ar bed a zo bras hag ar mor", " demat ar bed a zo braz hag ar mor"
    tie = {"logits_processor": [Tie(tokenizer, first, second)]}  # runs first: the fusion sees its scores
    search = generate_kwargs("br", 2, 30)
    kwargs = with_processors(search, tie)
    inputs = features(processor, 1)

    def say(alpha: float) -> str:
        fusion = LMFusion(load_lm(path), tokenizer, clean_text, alpha, 0.0, num_beams=2)
        generated = model.generate(
            input_features=inputs, **with_processors({**search, "logits_processor": [fusion]}, tie)
        )
        return tokenizer.decode(generated[0], skip_special_tokens=True)

    path = tmp_path / "braz.arpa"
    estimate([second.split()] * 3 + [["ar", "mor", "a", "zo", "braz"]], 3).write(path)
    plain = tokenizer.decode(model.generate(input_features=inputs, **kwargs)[0], skip_special_tokens=True)
    assert plain == first
    assert say(0.0) == first
    assert say(1.0) == second


# ------------------------------------------------------------------------------ tune_lm.py and evaluate --lm
@pytest.fixture(scope="module")
def lm_shards(tmp_path_factory) -> Path:
    """6 clips with Breton transcripts through the project's writer, in 2 shards."""
    import soundfile as sf
    from conftest import speech_like

    from wdsbr.corpus import open_corpus
    from wdsbr.shards import ShardOptions, shard_corpus

    corpus = tmp_path_factory.mktemp("lm-corpus") / "corpus"
    corpus.mkdir()
    lines = (DATA / "sentences.txt").read_text("utf-8").splitlines()
    for i in range(6):
        sf.write(corpus / f"utt{i}.wav", speech_like(1.0 + 0.2 * i, seed=i), 16_000)
        (corpus / f"utt{i}.txt").write_text(lines[i], encoding="utf-8")
    out = tmp_path_factory.mktemp("lm-shards") / "shards"
    options = ShardOptions(val_fraction=0, test_fraction=0, samples_per_shard=3, workers=1)
    shard_corpus(open_corpus(corpus), out, options, progress=False)
    return out / "train"


def run_tool(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True)


def test_tune_lm_saves_its_weights_beside_the_model_and_evaluate_uses_them(wordy_whisper, lm_shards, tmp_path):
    """tune_lm.py decodes the validation clips greedy, beam and at each grid point, writes MODEL/lm.json and the
    card's LM section; evaluate.py --lm then fuses at those weights unless told others."""
    model = tmp_path / "best"
    shutil.copytree(wordy_whisper, model)
    lm = tmp_path / "br.arpa"
    built = run_tool("tools/build_lm.py", DATA / "sentences.txt", "--order", 3, "--output", lm)
    assert built.returncode == 0, built.stderr
    common = ["--num-beams", 2, "--batch-size", 3, "--num-workers", 0]
    tuned = run_tool(
        "tools/tune_lm.py", "--model", model, "--data", lm_shards, "--lm", lm, "--alphas", "0.5 1", "--betas", "0,2",
        "--max-new-tokens", 8, *common,
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    settings = json.loads((model / "lm.json").read_text())
    assert [(p["alpha"], p["beta"]) for p in settings["grid"]] == [(0.5, 0.0), (0.5, 2.0), (1.0, 0.0), (1.0, 2.0)]
    best = min(settings["grid"], key=lambda p: (p["wer"], p["alpha"], p["beta"]))
    assert (settings["alpha"], settings["beta"], settings["wer_lm"]) == (best["alpha"], best["beta"], best["wer"])
    assert settings["samples"] == 6 and settings["lm_info"]["order"] == 3
    assert json.loads(tuned.stdout.strip().splitlines()[-1])["alpha"] == settings["alpha"]
    card = (model / "README.md").read_text()
    assert card.count("## Language model fusion") == 1 and "| beam 2 + LM |" in card and "order 3" in card

    evaluate = ["--model", model, "--data", lm_shards, "--lm", lm, "--generation-max-length", 8, "--precision", "fp32"]
    row = json.loads(run_tool("launch/evaluate.py", *evaluate, *common).stdout.strip().splitlines()[-1])
    assert row["lm"] == {
        "path": str(lm), "alpha": settings["alpha"], "beta": settings["beta"], "weights_from": str(model / "lm.json")
    }  # fmt: skip
    assert row["wer"] == pytest.approx(settings["wer_lm"])  # the same clips, the same decoding
    given = run_tool("launch/evaluate.py", *evaluate, *common, "--lm-alpha", 0, "--lm-beta", 0)
    row = json.loads(given.stdout.strip().splitlines()[-1])
    assert row["lm"]["weights_from"] == "given" and row["wer"] == pytest.approx(settings["wer_beam"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lm", "BAD"], "not a language model KenLM can load"),
        (["--lm", "MISSING"], "no such language model file"),
        (["--lm-alpha", "0.3"], "--lm-alpha/--lm-beta: only with --lm"),
    ],
)
def test_evaluate_with_a_bad_lm_is_one_error_line(wordy_whisper, lm_shards, tmp_path, extra, message):
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=2\n", encoding="utf-8")
    extra = [
        str(tmp_path / "bad.arpa") if e == "BAD" else str(tmp_path / "none.arpa") if e == "MISSING" else e
        for e in extra
    ]
    result = run_tool("launch/evaluate.py", "--model", wordy_whisper, "--data", lm_shards, *extra)
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr

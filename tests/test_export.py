"""wdsbr.export, tools/export.py and `launch/evaluate.py --engine faster-whisper`: a trained folder converted by
CTranslate2's own converter into a folder faster-whisper loads and transcribes with, greedy tokens equal to
transformers' on the same features, the new-token limit kept, bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import build_wordy_whisper, speech_like

from wdsbr.corpus import open_corpus
from wdsbr.evaluation import generate_kwargs
from wdsbr.export import (
    CT2_FILES,
    export_ct2,
    faster_whisper_max_new_tokens,
    load_ct2_tokenizer,
    load_faster_whisper,
    suppressed_tokens,
    transcribe_batch,
    transcribe_kwargs,
)
from wdsbr.features import log_mel_spectrogram
from wdsbr.model import build_tiny_whisper, load_model, load_processor, save_model_atomic
from wdsbr.shards import ShardOptions, shard_corpus

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("faster_whisper")

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "tools" / "export.py"
EVALUATE = REPO / "launch" / "evaluate.py"


def gentle_whisper(path: Path) -> str:
    """An English-only tiny random Whisper, timestamps suppressed, encoder and cross-attention ×3: its greedy
    decode is a real function of the weights but far from ties (the ×30 wordy model is chaotic: a 1e-6 change in
    an activation flips its argmax, so two correct runtimes disagree on it). CTranslate2 calls a model
    multilingual only from 51,865 tokens up, so a tiny test model is English-only on both sides."""
    return build_wordy_whisper(path, multilingual=False, scale=3.0)


@pytest.fixture(scope="module")
def gentle(tmp_path_factory) -> str:
    return gentle_whisper(tmp_path_factory.mktemp("gentle") / "model")


@pytest.fixture(scope="module")
def gentle_ct2(gentle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gentle-ct2") / "ct2"
    export_ct2(gentle, out)
    return out


def clips(n: int = 8) -> list[np.ndarray]:
    return [speech_like(0.5 + (i % 3) * 0.5, seed=i) for i in range(n)]


# ------------------------------------------------------------------------------------------------ export


def test_export_writes_every_file_faster_whisper_reads(gentle, gentle_ct2):
    files = {p.name for p in gentle_ct2.iterdir()}
    assert set(CT2_FILES) <= files
    assert (gentle_ct2 / "tokenizer.json").read_bytes() == (Path(gentle) / "tokenizer.json").read_bytes()
    assert json.loads((gentle_ct2 / "preprocessor_config.json").read_text())["feature_size"] == 80
    config = json.loads(
        (gentle_ct2 / "config.json").read_text()
    )  # CTranslate2's: suppression kept from generation config
    generation = json.loads((Path(gentle) / "generation_config.json").read_text())
    assert config["suppress_ids"] == generation["suppress_tokens"]
    assert config["suppress_ids_begin"] == generation["begin_suppress_tokens"]
    assert json.loads((gentle_ct2 / "wdsbr_export.json").read_text())["quantization"] == "float32"
    assert not list(gentle_ct2.parent.glob(".*.tmp"))  # written beside, renamed into place


def test_encoder_outputs_and_greedy_tokens_equal_transformers_in_float32(gentle, gentle_ct2):
    model, processor = load_model(gentle).eval(), load_processor(gentle, "en")
    features = log_mel_spectrogram(clips(), n_mels=80)
    new_tokens = 8
    with torch.no_grad():
        encoded = model.model.encoder(features).last_hidden_state.numpy()
        generated = model.generate(
            input_features=features, **generate_kwargs(None, 1, new_tokens), return_dict_in_generate=True
        )["sequences"]
    ct2 = ctranslate2.models.Whisper(str(gentle_ct2), device="cpu", compute_type="float32")
    view = ctranslate2.StorageView.from_array(features.numpy())
    np.testing.assert_allclose(np.array(ct2.encode(view)), encoded, atol=1e-4, rtol=1e-4)
    no_timestamps = processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    start = generated[0].tolist().index(no_timestamps) + 1
    prompt = generated[0, :start].tolist()  # transformers' own prompt, given to CTranslate2 as is
    results = ct2.generate(view, [prompt] * len(features), beam_size=1, max_length=2 * new_tokens)  # see below
    eos = processor.tokenizer.eos_token_id
    for row, result in zip(generated, results):
        assert result.sequences_ids[0] == [t for t in row[start:].tolist() if t != eos]
    assert all(len(r.sequences_ids[0]) == new_tokens for r in results)  # this model never stops early: the limit shows


def test_the_new_token_limit_is_translated_for_ctranslate2():
    # CTranslate2 stops at min(max_length / 2, max_length - prompt); faster-whisper passes prompt + max_new_tokens
    assert faster_whisper_max_new_tokens(None, 48) == 94  # 2 + 94 = 96 -> 48 new tokens
    assert faster_whisper_max_new_tokens("br", 48) == 92
    assert faster_whisper_max_new_tokens("br", 225) == 444  # capped: 448 / 2 = 224 new tokens at most
    kwargs = transcribe_kwargs("br", 1, 48, [5, 7])
    assert kwargs["suppress_tokens"] == [5, 7]  # the model's own, not faster-whisper's -1 (its punctuation list)
    assert kwargs["temperature"] == 0.0 and kwargs["beam_size"] == 1 and kwargs["without_timestamps"]
    assert kwargs["compression_ratio_threshold"] is None and kwargs["no_speech_threshold"] is None
    assert kwargs["condition_on_previous_text"] is False and kwargs["vad_filter"] is False


def test_faster_whisper_reaches_the_same_limit_as_generate(gentle, gentle_ct2):
    """The ×3 model never emits end-of-text: transformers writes exactly N tokens, and so must faster-whisper."""
    model = load_model(gentle).eval()
    whisper = load_faster_whisper(gentle_ct2, "float32")
    for new_tokens in (5, 12):
        segments, _ = whisper.transcribe(
            clips(1)[0], **transcribe_kwargs(None, 1, new_tokens, suppressed_tokens(gentle_ct2))
        )
        tokens = [t for segment in segments for t in segment.tokens]
        assert len(tokens) == new_tokens
        with torch.no_grad():
            generated = model.generate(
                input_features=log_mel_spectrogram(clips(1), n_mels=80), **generate_kwargs(None, 1, new_tokens)
            )
        assert len(generated[0]) == new_tokens
        assert tokens == generated[0].tolist()  # faster-whisper's own features (zero-padded log-mel) too, here


def test_a_128_mel_model_exports_and_transcribes(tmp_path):
    """faster-whisper#582: without preprocessor_config.json faster-whisper assumes 80 mel bins."""
    source = tmp_path / "m128"
    build_tiny_whisper(source, multilingual=False, n_mels=128)
    export_ct2(source, tmp_path / "ct2", "int8")
    whisper = load_faster_whisper(tmp_path / "ct2")
    assert whisper.feat_kwargs["feature_size"] == 128
    assert (
        len(transcribe_batch(whisper, clips(2), transcribe_kwargs(None, 1, 4, suppressed_tokens(tmp_path / "ct2"))))
        == 2
    )


def test_a_saved_best_model_has_preprocessor_config_and_keeps_alignment_heads(gentle, tmp_path):
    model, processor = load_model(gentle), load_processor(gentle, "en")
    model.generation_config.alignment_heads = [[1, 0], [1, 2]]
    best = save_model_atomic(model, processor, tmp_path / "best", None)
    assert json.loads((best / "preprocessor_config.json").read_text())["feature_size"] == 80
    generation = json.loads((best / "generation_config.json").read_text())
    assert generation["alignment_heads"] == [[1, 0], [1, 2]]
    assert generation["suppress_tokens"] == model.generation_config.suppress_tokens
    report = export_ct2(best, tmp_path / "best-ct2")
    assert report["warnings"] == []
    assert json.loads((tmp_path / "best-ct2" / "config.json").read_text())["alignment_heads"] == [[1, 0], [1, 2]]


def test_a_folder_from_the_reference_converter_gives_the_same_prompt(gentle_ct2, tmp_path):
    """ct2-transformers-converter --copy_files tokenizer.json preprocessor_config.json (or a hub download) has no
    transformers tokenizer config: the references' labels are made from tokenizer.json alone, with the same prompt
    (transformers would load a generic tokenizer there, without Whisper's prompt)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json"):
        (bare / name).write_bytes((gentle_ct2 / name).read_bytes())
    assert load_ct2_tokenizer(bare, "br").prefix_tokens == load_ct2_tokenizer(gentle_ct2, "br").prefix_tokens
    (bare / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer.json beside model.bin"):
        load_ct2_tokenizer(bare, "br")


# --------------------------------------------------------------------------------------------------- CLIs


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def test_shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus") / "corpus"
    for i, clip in enumerate(clips(6)):
        (folder / f"spk{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"spk{i % 2}" / f"utt{i}.wav", clip, 16_000)
        (folder / f"spk{i % 2}" / f"utt{i}.txt").write_text(["demat", "kenavo", "bara mor"][i % 3], encoding="utf-8")
    out = tmp_path_factory.mktemp("shards") / "shards"
    shard_corpus(
        open_corpus(folder),
        out,
        ShardOptions(val_fraction=0, test_fraction=0, samples_per_shard=4, workers=1),
        progress=False,
    )
    return out / "train"


def test_export_cli_then_evaluate_with_faster_whisper(tmp_path, test_shards):
    source = build_wordy_whisper(tmp_path / "wordy")  # multilingual for transformers; English-only for CTranslate2
    done = run(EXPORT, "--model", source, "--output", tmp_path / "ct2", "--quantization", "int8")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["quantization"] == "int8" and "model.bin" in report["files"]
    assert "no alignment_heads" in done.stderr  # the tiny model has none: said once, not fatal
    common = ["--data", test_shards, "--num-workers", "0", "--batch-size", "4", "--generation-max-length", "6"]
    scored = run(EVALUATE, "--model", tmp_path / "ct2", "--engine", "faster-whisper", *common)
    assert scored.returncode == 0, scored.stderr
    row = json.loads(scored.stdout.strip().splitlines()[-1])
    assert row["engine"] == "faster-whisper" and row["precision"] == "int8" and row["samples"] == 6
    assert row["loss"] is None and row["wer"] is not None and row["skipped_samples"] == 0
    float32 = run(
        EVALUATE, "--model", tmp_path / "ct2", "--engine", "faster-whisper", "--compute-type", "float32", *common
    )
    assert json.loads(float32.stdout.strip().splitlines()[-1])["precision"] == "float32"


def test_export_bad_input_is_one_line_and_exit_2(tmp_path, gentle):
    not_whisper = tmp_path / "bert"
    not_whisper.mkdir()
    (not_whisper / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "taken").mkdir()
    for args, expected in (
        (
            ["--model", not_whisper, "--output", tmp_path / "out"],
            "not a Whisper model (config.json model_type is 'bert')",
        ),
        (["--model", tmp_path / "missing", "--output", tmp_path / "out"], "no such model folder"),
        (["--model", gentle, "--output", tmp_path / "taken"], "already exists (pass --overwrite to replace it)"),
        (["--model", gentle, "--output", tmp_path / "out", "--quantization", "int3"], "--quantization int3: unknown"),
    ):
        done = run(EXPORT, *args)
        assert done.returncode == 2 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_faster_whisper_needs_an_exported_folder(gentle, test_shards):
    done = run(EVALUATE, "--model", gentle, "--engine", "faster-whisper", "--data", test_shards)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: --model {gentle}: --engine faster-whisper needs a "
            "CTranslate2 folder (no model.bin); make one with python tools/export.py"
        )
    )
    done = run(EVALUATE, "--model", gentle, "--compute-type", "int8", "--data", test_shards)
    assert done.returncode == 2 and "--compute-type int8: only for --engine faster-whisper" in done.stderr

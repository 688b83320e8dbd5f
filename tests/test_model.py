"""Loading Whisper from a local folder (the same code path as a hub id), prompts, and the tiny model."""

import pytest
import torch
from conftest import speech_like
from transformers import WhisperForConditionalGeneration

from wdsbr.model import build_tiny_whisper, language_code, load_model, load_processor, set_prompt


def test_breton_prompt_is_sot_br_transcribe_notimestamps(tiny_processor):
    tokens = tiny_processor.tokenizer.convert_ids_to_tokens(tiny_processor.tokenizer.prefix_tokens)
    assert tokens == ["<|startoftranscript|>", "<|br|>", "<|transcribe|>", "<|notimestamps|>"]


def test_english_only_checkpoint_has_no_language_token(tmp_path):
    folder = build_tiny_whisper(tmp_path / "tiny.en", multilingual=False)
    processor = load_processor(str(folder), language="br")
    tokens = processor.tokenizer.convert_ids_to_tokens(processor.tokenizer.prefix_tokens)
    assert tokens == ["<|startoftranscript|>", "<|notimestamps|>"]


@pytest.mark.parametrize("given, code", [("br", "br"), ("BR", "br"), ("breton", "br"), ("welsh", "cy")])
def test_language_names_and_codes(given, code):
    assert language_code(given) == code


def test_unknown_language_is_a_clear_error(tiny_whisper, tiny_processor):
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        set_prompt(tiny_processor.tokenizer, tiny_whisper, "klingon")


def test_tiny_model_loads_generates_and_accepts_real_features(tiny_whisper, tiny_processor):
    model = load_model(tiny_whisper)
    assert isinstance(model, WhisperForConditionalGeneration)
    features = tiny_processor.feature_extractor(
        speech_like(2.0), sampling_rate=16000, return_tensors="pt"
    ).input_features
    assert features.shape == (1, 80, 3000)
    with torch.no_grad():
        generated = model.generate(features, language="br", task="transcribe", max_new_tokens=5)
    assert generated.ndim == 2
    labels = torch.tensor([tiny_processor.tokenizer("demat").input_ids[1:]])
    assert torch.isfinite(model(input_features=features, labels=labels).loss)


def test_128_mel_tiny_model(tmp_path):
    folder = build_tiny_whisper(tmp_path / "tiny128", n_mels=128)
    processor = load_processor(str(folder))
    assert load_model(str(folder)).config.num_mel_bins == 128
    assert processor.feature_extractor.feature_size == 128

"""LoRA (wdsbr.lora, train.py --lora): only the adapters train, the merged model is a plain Whisper that gives
base + adapter's logits, best/ holds it with the adapter beside it; the offload config trains on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from wdsbr.lora import ADAPTER_FOLDER, apply_lora, check_lora, describe, merged_state_dict
from wdsbr.model import load_model, save_model_atomic

pytest.importorskip("peft")


def batch(model, clips: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(clips, model.config.num_mel_bins, 3000, generator=generator)
    labels = torch.randint(0, 200, (clips, 6), generator=generator)
    return {"input_features": features, "labels": labels}


def trained_adapter(tiny_whisper, steps: int = 3):
    model = load_model(tiny_whisper)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    adapted = apply_lora(model, 4, 8.0, 0.0, "q_proj,v_proj")
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    adapted.train()
    for step in range(steps):
        adapted(**batch(model, seed=step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return adapted.eval(), before


def test_lora_trains_only_the_adapters(tiny_whisper):
    adapted, before = trained_adapter(tiny_whisper)
    base = adapted.get_base_model().state_dict()
    after = {key.replace(".base_layer.", "."): tensor for key, tensor in base.items() if ".lora_" not in key}
    assert set(after) == set(before)
    assert all(torch.equal(after[name], before[name]) for name in before)  # the base: bit-identical
    lora = {key: tensor for key, tensor in base.items() if ".lora_B." in key}
    assert lora and all(tensor.abs().sum() > 0 for tensor in lora.values())  # B starts at 0: it trained
    row = describe(adapted)
    assert 0 < row["trainable_params"] < row["total_params"] and row["lora_rank"] == 4
    assert row["lora_targets"] == ["q_proj", "v_proj"]
    merged = merged_state_dict(adapted)
    assert not torch.equal(
        merged["model.encoder.layers.0.self_attn.q_proj.weight"],
        before["model.encoder.layers.0.self_attn.q_proj.weight"],
    )


def test_the_merged_model_is_a_plain_whisper_with_base_plus_adapter_logits(tiny_whisper, tiny_processor, tmp_path):
    adapted, _ = trained_adapter(tiny_whisper)
    inputs = batch(adapted.get_base_model(), seed=9)
    with torch.no_grad():
        expected = adapted(**inputs).logits
        plain = WhisperForConditionalGeneration(adapted.get_base_model().config)
        plain.load_state_dict(merged_state_dict(adapted), strict=True)
        plain.tie_weights()
        assert torch.allclose(plain.eval()(**inputs).logits, expected, atol=1e-5)
        best = save_model_atomic(adapted, tiny_processor, tmp_path / "best", "br")
        assert (best / ADAPTER_FOLDER / "adapter_config.json").is_file()
        assert json.loads((best / "config.json").read_text())["model_type"] == "whisper"
        reloaded = load_model(str(best)).eval()
        assert not any(".lora_" in name for name, _ in reloaded.named_parameters())
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rank": -1}, "--lora -1: give a rank ≥ 1"),
        ({"alpha": 0}, "--lora-alpha 0: must be above 0"),
        ({"dropout": 1.0}, "--lora-dropout 1: must be in [0, 1)"),
        ({"targets": " , "}, "--lora-targets ' , ': name one or more linear layers"),
    ],
)
def test_bad_lora_options_are_named(options, message):
    settings = {"rank": 8, "alpha": 16.0, "dropout": 0.1, "targets": "q_proj,v_proj", **options}
    assert message in "; ".join(check_lora(**settings))


def test_a_target_the_model_does_not_have_is_one_clear_error(tiny_whisper):
    with pytest.raises(ValueError, match="--lora-targets: no linear layer named qkv in this model"):
        apply_lora(load_model(tiny_whisper), 4, 8.0, 0.0, "q_proj,qkv")


def test_a_lora_best_exports_to_ctranslate2_and_decodes_as_the_merged_model(tmp_path, tiny_processor):
    """CTranslate2 refuses a PeftModel; the merged best/ exports like any Whisper, and CTranslate2's greedy tokens
    on the same features equal transformers' from the merged model."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from conftest import build_wordy_whisper, speech_like

    from wdsbr.evaluation import generate_kwargs
    from wdsbr.export import export_ct2
    from wdsbr.features import log_mel_spectrogram
    from wdsbr.model import load_processor

    base = build_wordy_whisper(tmp_path / "gentle", multilingual=False, scale=3.0)  # far from ties (test_export)
    adapted, _ = trained_adapter(base, steps=2)
    processor = load_processor(base, "en")
    best = save_model_atomic(adapted, processor, tmp_path / "best", None)
    export_ct2(str(best), tmp_path / "best-ct2")
    merged = load_model(str(best)).eval()
    features = log_mel_spectrogram([speech_like(0.5 + 0.5 * i, seed=i) for i in range(4)], n_mels=80)
    with torch.no_grad():
        kwargs = generate_kwargs(None, 1, 6)
        generated = merged.generate(input_features=features, **kwargs, return_dict_in_generate=True)["sequences"]
    ct2 = ctranslate2.models.Whisper(str(tmp_path / "best-ct2"), device="cpu", compute_type="float32")
    no_timestamps = processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    start = generated[0].tolist().index(no_timestamps) + 1
    view = ctranslate2.StorageView.from_array(features.numpy())
    results = ct2.generate(view, [generated[0, :start].tolist()] * len(features), beam_size=1, max_length=12)
    eos = processor.tokenizer.eos_token_id
    for row, result in zip(generated, results, strict=True):
        assert result.sequences_ids[0] == [t for t in row[start:].tolist() if t != eos]

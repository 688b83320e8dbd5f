"""The exact gather, early stopping, and one validation step (scoring itself: tests/test_scoring.py)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import speech_like

from wdsbr.collate import Collator
from wdsbr.evaluation import EarlyStopping, gather, generate_kwargs, validation_step
from wdsbr.model import load_model
from wdsbr.scoring import Prediction


def test_gather_without_a_process_group_sorts_by_key_and_refuses_duplicates():
    merged, loss, tokens = gather([Prediction("b", "x", "y"), Prediction("a", "x", "x")], 3.0, 6)
    assert [r.key for r in merged] == ["a", "b"] and (loss, tokens) == (3.0, 6)
    with pytest.raises(AssertionError, match="scored twice"):
        gather([Prediction("a", "x", "y"), Prediction("a", "x", "y")], 0.0, 0)


def test_early_stopping_counts_evaluations_without_improvement_beyond_min_delta():
    stopper = EarlyStopping(metric="wer", min_delta=0.01, patience=2)
    assert stopper.update({"wer": 0.50}, 100) is True
    assert stopper.update({"wer": 0.495}, 200) is False  # better, but by less than min_delta
    assert not stopper.should_stop
    assert stopper.update({"wer": 0.40, "cer": 0.2}, 300) is True and stopper.bad_evaluations == 0
    assert stopper.update({"wer": 0.45}, 400) is False
    assert stopper.update({"wer": math.nan}, 500) is False  # a NaN never improves
    assert stopper.should_stop and (stopper.best, stopper.best_step) == (0.40, 300)
    assert stopper.best_scores == {"wer": 0.40, "cer": 0.2}
    restored = EarlyStopping.from_state_dict(stopper.state_dict())
    assert restored == stopper


def test_patience_zero_never_stops():
    stopper = EarlyStopping(patience=0)
    for step in range(10):
        stopper.update({"wer": 1.0}, step)
    assert not stopper.should_stop


def test_generate_kwargs_have_the_prompt_only_for_multilingual_models():
    assert generate_kwargs("br", 1, 50) == {
        "num_beams": 1,
        "max_new_tokens": 50,
        "language": "br",
        "task": "transcribe",
    }
    assert generate_kwargs(None, 2, 50) == {"num_beams": 2, "max_new_tokens": 50}


def test_validation_step_returns_token_weighted_loss_and_decoded_text(tiny_whisper, tiny_processor):
    model = load_model(tiny_whisper).eval()
    tokenizer = tiny_processor.tokenizer
    samples = [
        {"audio": speech_like(1.0, seed=i), "labels": tokenizer(text).input_ids, "key": str(i), "text": text}
        for i, text in enumerate(["demat", "kenavo ar wech all"])
    ]
    batch = Collator(80, model.config.decoder_start_token_id)(samples)
    loss_sum, tokens, predictions, references = validation_step(
        model, batch, tokenizer, generate_kwargs("br", 1, 5), torch.float32, torch.device("cpu")
    )
    assert tokens == int((batch["labels"] != -100).sum())
    expected = model(input_features=batch["input_features"], labels=batch["labels"]).loss.item() * tokens
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    assert references == ["demat", "kenavo ar wech all"]
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)


@pytest.mark.parametrize("beams", [1, 2])
def test_validation_step_runs_the_encoder_once_and_decodes_what_generate_decodes(wordy_whisper, beams):
    from wdsbr.evaluation import no_timestamps, with_processors
    from wdsbr.model import load_processor

    model, tokenizer = load_model(wordy_whisper).eval(), load_processor(wordy_whisper, "br").tokenizer
    samples = [
        {
            "audio": speech_like(0.8 + 0.3 * i, seed=i),
            "labels": tokenizer("demat").input_ids,
            "key": str(i),
            "text": "x",
        }
        for i in range(4)
    ]
    batch = Collator(80, model.config.decoder_start_token_id)(samples)
    kwargs = generate_kwargs("br", beams, 6)
    calls = []
    hook = model.get_encoder().register_forward_hook(lambda *args: calls.append(1))
    loss_sum, tokens, predictions, _ = validation_step(
        model, batch, tokenizer, kwargs, torch.float32, torch.device("cpu")
    )
    hook.remove()
    assert len(calls) == 1  # one encoder pass feeds the loss and the search
    with torch.no_grad():
        plain = model.generate(input_features=batch["input_features"], **with_processors(kwargs, no_timestamps(model)))
        loss = model(input_features=batch["input_features"], labels=batch["labels"]).loss.item() * tokens
    assert predictions == [text.strip() for text in tokenizer.batch_decode(plain, skip_special_tokens=True)]
    assert len(set(predictions)) > 1 and loss_sum.item() == pytest.approx(loss, rel=1e-6)


def test_beam_search_cache_decodes_bitwise_as_transformers_and_leaves_the_cross_attention_in_place(
    wordy_whisper, monkeypatch
):
    from transformers.cache_utils import DynamicCache

    from wdsbr.evaluation import BeamSearchCache, generate_from_encoded, no_timestamps, with_processors

    model = load_model(wordy_whisper).eval()
    batch = Collator(80, model.config.decoder_start_token_id)(
        [{"audio": speech_like(0.6 + 0.4 * i, seed=i), "labels": [1, 2], "key": str(i), "text": "x"} for i in range(3)]
    )
    kwargs = {**generate_kwargs("br", 3, 8), "return_dict_in_generate": True, "output_scores": True}
    steps, reorder = [], BeamSearchCache.reorder_cache
    monkeypatch.setattr(BeamSearchCache, "reorder_cache", lambda self, index: steps.append(1) or reorder(self, index))
    with torch.no_grad():
        plain = model.generate(input_features=batch["input_features"], **with_processors(kwargs, no_timestamps(model)))
        hidden = model.get_encoder()(batch["input_features"]).last_hidden_state
        ours = generate_from_encoded(model, hidden, kwargs)
    assert steps  # the search went through it
    assert torch.equal(ours.sequences, plain.sequences)
    assert torch.equal(ours.sequences_scores, plain.sequences_scores)
    assert len({tuple(row) for row in ours.sequences.tolist()}) > 1

    cache = BeamSearchCache(DynamicCache(), DynamicCache())  # a step's reorder: self-attention only
    keys, values = torch.arange(8.0).view(4, 1, 2, 1), torch.arange(8.0).view(4, 1, 2, 1) + 10
    cache.self_attention_cache.update(keys, values, 0)
    cache.cross_attention_cache.update(keys.clone(), values.clone(), 0)
    cross = cache.cross_attention_cache.layers[0].keys
    cache.reorder_cache(torch.tensor([1, 1, 3, 2]))
    assert torch.equal(cache.self_attention_cache.layers[0].keys, keys[[1, 1, 3, 2]])
    assert cache.cross_attention_cache.layers[0].keys is cross


def test_validation_never_decodes_timestamp_tokens(tiny_whisper, tiny_processor):
    """A model that would rather emit <|0.00|> (as one fine-tuned with --timestamps may, early): transformers'
    segment loop would stop advancing on two in a row; validation's decode keeps timestamps out and ends."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from wdsbr.evaluation import NoTimestamps, no_timestamps

    model = load_model(tiny_whisper).eval()
    begin = model.generation_config.no_timestamps_token_id + 1
    assert isinstance(no_timestamps(model)["logits_processor"][0], NoTimestamps)

    class Prefer(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, begin] += 1e4
            return scores

    features = Collator(80, model.config.decoder_start_token_id)(
        [{"audio": speech_like(1.0), "labels": [1, 2], "key": "a", "text": "a"}]
    )["input_features"]
    preferred = LogitsProcessorList([Prefer(), *no_timestamps(model)["logits_processor"]])
    generated = model.generate(
        input_features=features, max_new_tokens=6, language="br", task="transcribe", logits_processor=preferred
    )
    assert generated.shape[1] > 1 and not (generated >= begin).any()

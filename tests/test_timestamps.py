"""Whisper's timestamped label format (wdsbr.timestamps): the 0.02 s grid, the tokenizer's own timestamp ids,
segments refused unless ordered and inside the window, the decoder limit, and the previous-text prompt kept out of
the loss. transformers' own decoder of timestamps (`decode(..., output_offsets=True)`) reads the labels back."""

from __future__ import annotations

import pytest

from wdsbr.model import build_tiny_whisper, load_processor
from wdsbr.timestamps import (
    IGNORE_INDEX,
    MAX_PREVIOUS_TOKENS,
    timed_labels,
    timestamp_begin,
    timestamp_id,
    timestamp_prompt,
    with_previous_text,
)

SEGMENTS = [(0.0, 2.4, "demat deoc'h"), (2.6, 5.013, "kenavo"), (5.02, 29.985, "trugarez")]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A multilingual and an English-only tiny tokenizer: their timestamp tokens have different ids."""
    multilingual = build_tiny_whisper(tmp_path_factory.mktemp("multi"))
    english = build_tiny_whisper(tmp_path_factory.mktemp("english"), multilingual=False)
    return {
        "multilingual": load_processor(str(multilingual), "br").tokenizer,
        "english": load_processor(str(english), None).tokenizer,
    }


@pytest.mark.parametrize("kind", ["multilingual", "english"])
def test_timestamp_ids_are_the_tokenizers_own_on_the_002_grid(tokenizers, kind):
    tokenizer = tokenizers[kind]
    begin = timestamp_begin(tokenizer)
    assert begin == tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    assert tokenizer.convert_ids_to_tokens(timestamp_id(begin, 2.4)) == "<|2.40|>"
    assert tokenizer.convert_ids_to_tokens(timestamp_id(begin, 5.013)) == "<|5.02|>"  # rounded to the grid
    assert tokenizer.convert_ids_to_tokens(timestamp_id(begin, 30.0)) == "<|30.00|>"
    assert timestamp_id(begin, 0.0) == tokenizer.convert_tokens_to_ids("<|0.00|>") == begin
    for outside in (-0.01, 30.02):
        with pytest.raises(ValueError, match="outside the 30 s window"):
            timestamp_id(begin, outside)


def test_english_and_multilingual_ids_differ(tokenizers):
    assert timestamp_begin(tokenizers["english"]) != timestamp_begin(tokenizers["multilingual"])


@pytest.mark.parametrize("kind", ["multilingual", "english"])
def test_timed_labels_read_back_by_transformers(tokenizers, kind):
    tokenizer = tokenizers[kind]
    prompt = list(tokenizer.prefix_tokens)
    labels = timed_labels(tokenizer, prompt, SEGMENTS)
    no_timestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    assert no_timestamps in prompt and no_timestamps not in labels
    assert labels[: len(prompt) - 1] == timestamp_prompt(prompt, tokenizer) and labels[-1] == tokenizer.eos_token_id
    body = labels[len(prompt) - 1 : -1]
    tokens = tokenizer.convert_ids_to_tokens(body)
    stamps = [token for token in tokens if token.startswith("<|") and token.endswith("|>")]
    assert stamps == ["<|0.00|>", "<|2.40|>", "<|2.60|>", "<|5.02|>", "<|5.02|>", "<|29.98|>"]
    texts = tokenizer.decode(body, skip_special_tokens=True)
    assert texts.split() == "demat deoc'h kenavo trugarez".split()


def test_a_tokenizer_without_named_timestamp_tokens_still_gets_them_after_notimestamps(tokenizers):
    """OpenAI's tiktoken vocabulary (tiny.en as make_tiny_en.sh builds it) has no <|0.00|> token name; generate()
    takes <|notimestamps|> + 1 all the same."""
    tokenizer = tokenizers["english"]
    assert timestamp_begin(tokenizer) == tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1


@pytest.mark.parametrize(
    "segments, problem",
    [
        ([(0.0, 31.0, "a")], "not inside the 30 s window"),
        ([(2.0, 1.0, "a")], "not inside the 30 s window"),
        ([(0.0, 2.0, "a"), (1.5, 3.0, "b")], "before the previous one ends"),
    ],
)
def test_segments_out_of_order_or_outside_the_window_are_refused(tokenizers, segments, problem):
    tokenizer = tokenizers["multilingual"]
    with pytest.raises(ValueError, match=problem):
        timed_labels(tokenizer, list(tokenizer.prefix_tokens), segments)


def test_labels_past_the_decoder_limit_are_refused_not_cut(tokenizers):
    tokenizer = tokenizers["multilingual"]
    prompt = list(tokenizer.prefix_tokens)
    full = timed_labels(tokenizer, prompt, SEGMENTS)
    assert timed_labels(tokenizer, prompt, SEGMENTS, max_label_tokens=len(full) - 1) == full
    assert timed_labels(tokenizer, prompt, SEGMENTS, max_label_tokens=len(full) - 2) is None


def test_previous_text_is_input_but_never_in_the_loss(tokenizers):
    tokenizer = tokenizers["multilingual"]
    labels = timed_labels(tokenizer, list(tokenizer.prefix_tokens), SEGMENTS)
    previous = tokenizer.encode(" me a gomz brezhoneg", add_special_tokens=False)
    inputs, targets = with_previous_text(labels, previous, tokenizer)
    assert inputs[0] == tokenizer.convert_tokens_to_ids("<|startofprev|>")
    assert inputs[1 : 1 + len(previous)] == previous and inputs[1 + len(previous) :] == labels[:-1]
    assert len(targets) == len(inputs)
    masked = 1 + len(previous)  # the positions predicting the previous text and <|startoftranscript|>
    assert targets[:masked] == [IGNORE_INDEX] * masked
    assert targets[masked:] == labels[1:]  # language, task, timestamps, text, <|endoftext|>: as without it


def test_previous_text_keeps_its_last_tokens_within_the_limits(tokenizers):
    tokenizer = tokenizers["multilingual"]
    labels = timed_labels(tokenizer, list(tokenizer.prefix_tokens), SEGMENTS)
    long_previous = list(range(10, 10 + 400))
    inputs, _ = with_previous_text(labels, long_previous, tokenizer)
    assert inputs[1 : 1 + MAX_PREVIOUS_TOKENS] == long_previous[-MAX_PREVIOUS_TOKENS:]
    inputs, targets = with_previous_text(labels, long_previous, tokenizer, max_label_tokens=len(labels) + 5)
    assert inputs[1:6] == long_previous[-5:] and len(inputs) == len(labels) + 5

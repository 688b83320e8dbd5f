"""Whisper's timestamped training format: labels `<|0.00|> text <|2.40|><|2.60|> text <|5.00|>` and the
previous-text prompt `<|startofprev|> … <|startoftranscript|>`, as OpenAI trained Whisper (and distil-whisper
fine-tunes it) so that a fine-tuned model keeps its long-form decoding.

Rules, each tested (tests/test_timestamps.py):
* a timestamp is rounded to Whisper's 0.02 s grid and its token is `<|0.00|>` + round(seconds / 0.02), where
  `<|0.00|>` is the token after the tokenizer's own `<|notimestamps|>` (50364 multilingual, 50363 English-only,
  50365 for v3/turbo, which have one more language);
* segments are inside the 30 s window, each ends at or after it starts, and each starts at or after the previous
  one ends: anything else is refused (ValueError), never silently reordered or clamped;
* the prompt loses `<|notimestamps|>`; the labels still fit the decoder's 448 tokens or are refused (None);
* with previous text, the decoder's input is `<|startofprev|> prev <|startoftranscript|> …` and the previous text
  (with the <|startoftranscript|> after it) is -100 in the loss: the rest is learnt as without it.
"""

from __future__ import annotations

from collections.abc import Sequence

from wdsbr.audio import WINDOW_SECONDS
from wdsbr.collate import IGNORE_INDEX

TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_PREVIOUS_TOKENS = 223  # Whisper's n_text_ctx // 2 - 1: the previous text is cut from its start beyond this


def timestamp_begin(tokenizer) -> int:
    """The id of `<|0.00|>`: the one after `<|notimestamps|>` in every Whisper vocabulary (as generate() takes it),
    whether or not the tokenizer names the timestamp tokens (one built from OpenAI's tiktoken files does not).
    Raises ValueError for a tokenizer without `<|notimestamps|>` or whose `<|0.00|>` is elsewhere."""
    no_timestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    if no_timestamps is None or no_timestamps == tokenizer.unk_token_id:
        raise ValueError("the tokenizer has no <|notimestamps|> token: not a Whisper tokenizer")
    named = tokenizer.convert_tokens_to_ids("<|0.00|>")
    if named not in (None, tokenizer.unk_token_id, no_timestamps + 1):
        raise ValueError(
            f"the tokenizer's <|0.00|> is token {named}, not the one after <|notimestamps|> ({no_timestamps + 1})"
        )
    return no_timestamps + 1


def timestamp_id(begin: int, seconds: float) -> int:
    """The token of `seconds` (0 to 30) on the 0.02 s grid; `begin`: the tokenizer's `<|0.00|>` (`timestamp_begin`)."""
    if not 0.0 <= seconds <= WINDOW_SECONDS + 1e-9:
        raise ValueError(f"timestamp {seconds:.3f} s is outside the {WINDOW_SECONDS:.0f} s window")
    return begin + int(round(seconds / TIME_PRECISION))


def timestamp_prompt(prompt_ids: Sequence[int], tokenizer) -> list[int]:
    """The transcribe prompt without `<|notimestamps|>`: the model is to predict timestamps."""
    no_timestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    return [token for token in prompt_ids if token != no_timestamps]


def check_segments(segments: Sequence[tuple[float, float, str]]) -> None:
    """Raise ValueError naming the first segment that is outside the window, reversed or overlapping."""
    previous_end = 0.0
    for index, (start, end, _) in enumerate(segments):
        if not 0.0 <= start <= end <= WINDOW_SECONDS + 1e-9:
            raise ValueError(
                f"segment {index} ({start:.2f}–{end:.2f} s) is not inside the {WINDOW_SECONDS:.0f} s window "
                "with its end after its start"
            )
        if start < previous_end - 1e-9:
            raise ValueError(
                f"segment {index} starts at {start:.2f} s, before the previous one ends ({previous_end:.2f} s)"
            )
        previous_end = end


def timed_labels(
    tokenizer, prompt_ids: Sequence[int], segments: Sequence[tuple[float, float, str]], max_label_tokens: int = 448
) -> list[int] | None:
    """`prompt (no <|notimestamps|>) <|start|> text <|end|> … <|endoftext|>` for (start, end, cleaned text) segments
    of one window, in seconds from the window's start; None when the decoder cannot hold it (the caller counts it).
    Raises ValueError for segments that break the rules above."""
    check_segments(segments)
    begin = timestamp_begin(tokenizer)  # once per window: this runs in the DataLoader workers
    labels = timestamp_prompt(prompt_ids, tokenizer)
    for start, end, text in segments:
        labels += [
            timestamp_id(begin, start),
            *tokenizer.encode(" " + text.strip(), add_special_tokens=False),
            timestamp_id(begin, end),
        ]
    labels.append(tokenizer.eos_token_id)
    return labels if len(labels) - 1 <= max_label_tokens else None


def with_previous_text(
    labels: Sequence[int], previous_ids: Sequence[int], tokenizer, max_label_tokens: int = 448
) -> tuple[list[int], list[int]]:
    """(decoder input ids, loss labels) for `labels` (starting with <|startoftranscript|>) conditioned on the
    previous text's tokens: input `<|startofprev|> prev <|startoftranscript|> …` and labels the input shifted by
    one, -100 where the next token is the previous text or <|startoftranscript|>: what follows (language, task,
    timestamps, text) is learnt exactly as without previous text. The previous text keeps its
    last tokens: at most MAX_PREVIOUS_TOKENS, and fewer where the whole would pass the decoder's limit."""
    start_of_prev = tokenizer.convert_tokens_to_ids("<|startofprev|>")
    room = min(MAX_PREVIOUS_TOKENS, max_label_tokens - len(labels))
    previous = list(previous_ids)[-room:] if room > 0 else []
    sequence = [start_of_prev, *previous, *labels]
    prompt_length = 2 + len(previous)  # <|startofprev|> prev <|startoftranscript|>: never predicted
    inputs = sequence[:-1]
    targets = [IGNORE_INDEX if position + 1 < prompt_length else token for position, token in enumerate(sequence[1:])]
    return inputs, targets

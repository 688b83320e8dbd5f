"""Validation: `generate()` with the language/task prompt over this rank's exact share, results gathered exactly
across ranks, and the early-stopping rule rank 0 applies.

The trainer and the evaluation CLI both run `run_validation` + `gather` and score with `wdsbr.scoring.score_all`,
so the WER a model gets in `launch/evaluate.py` equals the WER the trainer logged for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from wdsbr import dist
from wdsbr.scoring import Prediction


def generate_kwargs(language: str | None, num_beams: int, max_new_tokens: int) -> dict[str, Any]:
    """generate() arguments: the Breton (or other) transcribe prompt; none for English-only checkpoints."""
    kwargs: dict[str, Any] = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    if language is not None:
        kwargs.update(language=language, task="transcribe")
    return kwargs


class NoTimestamps(LogitsProcessor):
    """Timestamp tokens (from `<|notimestamps|>` + 1 on) never chosen: a short clip is decoded without timestamps.
    transformers' generate() does not suppress them after `<|notimestamps|>`, and a model that emits two in a row
    (one fine-tuned with --timestamps, early) makes its segment loop stop advancing: validation would never end."""

    def __init__(self, timestamp_begin: int):
        self.timestamp_begin = timestamp_begin

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.timestamp_begin :] = -math.inf
        return scores


def no_timestamps(model) -> dict[str, Any]:
    """generate()'s `logits_processor` that keeps timestamps out of a short-clip decode (none if the model's
    generation config names no `<|notimestamps|>`)."""
    token = getattr(getattr(model, "generation_config", None), "no_timestamps_token_id", None)
    return {"logits_processor": LogitsProcessorList([NoTimestamps(token + 1)])} if token is not None else {}


def with_processors(gen_kwargs: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """generate() arguments with `more`'s logits processors run before those `gen_kwargs` already has (the
    timestamp mask before the language model's fusion, which must see only tokens that can be chosen)."""
    given = list(gen_kwargs.get("logits_processor") or [])
    processors = [*more.get("logits_processor", []), *given]
    return {**gen_kwargs, **({"logits_processor": LogitsProcessorList(processors)} if processors else {})}


class BeamSearchCache(EncoderDecoderCache):
    """transformers' encoder-decoder cache, but a beam search step reorders only the decoder's self-attention: the
    cross-attention keys and values of one input's beams are the same rows (its encoder output, repeated), and the
    beams never leave their input, so reordering them (an index_select of 2 × layers × beams × 1,500 frames per
    step) copied each row onto an equal one. Same tokens, bitwise; evaluate.py at beam 5 on the base: 0.54× the time."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


def generate_from_encoded(model, hidden: torch.Tensor, gen_kwargs: dict[str, Any]) -> torch.Tensor:
    """Short-form generate() from the encoder's output `hidden` (no timestamps), with `BeamSearchCache` for beams."""
    extra: dict[str, Any] = {}
    if gen_kwargs.get("num_beams", 1) > 1:
        config = model.config.get_text_config(decoder=True)
        extra["cache"] = BeamSearchCache(DynamicCache(config=config), DynamicCache(config=config))
    return model.generate(  # a new output object: generate() expands it for the beams in place
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        **with_processors(gen_kwargs, no_timestamps(model)),
        **extra,
    )


@torch.no_grad()
def validation_step(
    model, batch: dict, tokenizer, gen_kwargs: dict, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, int, list[str], list[str]]:
    """Loss on the labels (teacher forcing) and free-running predictions for one batch.

    Returns (summed token loss, label token count, predictions, references) so losses average exactly
    over tokens whatever the batching. The encoder runs once: its output feeds the loss and generate() (the 30 s
    encoder is most of a short clip's cost; run inside both, it was half of validation's time)."""
    features = batch["input_features"].to(device, dtype=dtype)
    labels = batch["labels"].to(device)
    tokens = int((labels != -100).sum())
    hidden = model.get_encoder()(features).last_hidden_state
    loss = model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), labels=labels).loss.float() * tokens
    generated = generate_from_encoded(model, hidden, gen_kwargs)
    predictions = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return loss, tokens, [p.strip() for p in predictions], list(batch["texts"])


def run_validation(
    model, loader, tokenizer, gen_kwargs: dict, dtype: torch.dtype, device: torch.device
) -> tuple[list[Prediction], float, int, float]:
    """This rank's share of the validation set: (predictions, loss sum, token count, seconds)."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    results: list[Prediction] = []
    loss_sum, token_count = 0.0, 0
    for batch in loader:
        loss, tokens, predictions, references = validation_step(model, batch, tokenizer, gen_kwargs, dtype, device)
        loss_sum += float(loss)
        token_count += tokens
        results += [Prediction(k, r, p) for k, r, p in zip(batch["keys"], references, predictions)]
    model.train(was_training)
    return results, loss_sum, token_count, time.perf_counter() - start


def gather(results: list[Prediction], loss_sum: float, token_count: int) -> tuple[list[Prediction], float, int]:
    """Collective: all ranks. Every rank's predictions (sorted by key; a key seen twice is an error) and the
    summed loss and token count. Works unchanged without a process group (one process)."""
    parts = dist.every_rank(([asdict(r) for r in results], loss_sum, token_count))
    merged = sorted((Prediction(**r) for part in parts for r in part[0]), key=lambda r: r.key)
    keys = [r.key for r in merged]
    assert len(keys) == len(set(keys)), "a validation sample was scored twice: the exact split is broken"
    return merged, sum(p[1] for p in parts), sum(p[2] for p in parts)


@dataclass
class EarlyStopping:
    """Rank 0's rule: an evaluation improves when metric < best - min_delta; after `patience` evaluations in a
    row without improvement, stop (patience 0: never stop early)."""

    metric: str = "wer"
    min_delta: float = 0.0
    patience: int = 3
    best: float | None = None
    best_step: int | None = None
    best_scores: dict | None = None  # every score of the best evaluation (wer, cer, loss, ...)
    bad_evaluations: int = 0
    history: list[dict] = field(default_factory=list)

    def update(self, scores: dict, step: int) -> bool:
        """Record an evaluation's scores; True when its metric is a new best."""
        value = scores[self.metric]
        improved = not math.isnan(value) and (self.best is None or value < self.best - self.min_delta)
        if improved:
            self.best, self.best_step, self.best_scores, self.bad_evaluations = value, step, dict(scores), 0
        else:
            self.bad_evaluations += 1
        self.history.append({"step": step, "value": value, "is_best": improved})
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evaluations >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> EarlyStopping:
        return cls(**state)


def sum_across_ranks(counts: dict[str, float]) -> dict[str, float]:
    """Collective: all ranks. Every rank's counts (audio seconds, skipped samples by reason) summed by name.
    Works unchanged without a process group (one process)."""
    total: dict[str, float] = {}
    for part in dist.every_rank(counts):
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total

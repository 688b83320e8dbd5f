"""Validation and scoring: `generate()` with the language/task prompt, WER/CER with jiwer on normalised text,
results gathered exactly across ranks, and the early-stopping rule rank 0 applies.

One scoring function (`score`) and one normaliser serve the trainer and the evaluation CLI, so the WER a
model gets in `launch/evaluate.py` equals the WER the trainer logged for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import jiwer
import torch

METRICS = ("wer", "cer", "loss")  # all three: lower is better


@dataclass
class Prediction:
    key: str
    reference: str  # the raw transcript from the shard
    prediction: str  # the decoded text, special tokens removed


def generate_kwargs(language: str | None, num_beams: int, max_new_tokens: int) -> dict[str, Any]:
    """generate() arguments: the Breton (or other) transcribe prompt; none for English-only checkpoints."""
    kwargs: dict[str, Any] = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    if language is not None:
        kwargs.update(language=language, task="transcribe")
    return kwargs


@torch.no_grad()
def validation_step(model, batch: dict, tokenizer, gen_kwargs: dict, dtype: torch.dtype,
                    device: torch.device) -> tuple[torch.Tensor, int, list[str], list[str]]:
    """Loss on the labels (teacher forcing) and free-running predictions for one batch.

    Returns (summed token loss, label token count, predictions, references) so losses average exactly
    over tokens whatever the batching."""
    features = batch["input_features"].to(device, dtype=dtype)
    labels = batch["labels"].to(device)
    tokens = int((labels != -100).sum())
    loss = model(input_features=features, labels=labels).loss.float() * tokens
    generated = model.generate(input_features=features, **gen_kwargs)
    predictions = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return loss, tokens, [p.strip() for p in predictions], list(batch["texts"])


def run_validation(model, loader, tokenizer, gen_kwargs: dict, dtype: torch.dtype,
                   device: torch.device) -> tuple[list[Prediction], float, int, float]:
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
    local = ([asdict(r) for r in results], loss_sum, token_count)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, local)
    else:
        parts = [local]
    merged = sorted((Prediction(**r) for part in parts for r in part[0]), key=lambda r: r.key)
    keys = [r.key for r in merged]
    assert len(keys) == len(set(keys)), "a validation sample was scored twice: the exact split is broken"
    return merged, sum(p[1] for p in parts), sum(p[2] for p in parts)


def score(results: list[Prediction], normalize: Callable[[str], str]) -> dict[str, Any]:
    """Corpus-level WER and CER (total errors / total reference words or characters) after `normalize`.
    References that normalise to nothing are left out and counted."""
    pairs = [(normalize(r.reference), normalize(r.prediction)) for r in results]
    kept = [(ref, hyp) for ref, hyp in pairs if ref]
    if not kept:
        return {"wer": math.nan, "cer": math.nan, "samples": 0, "empty_references": len(pairs)}
    references, hypotheses = [ref for ref, _ in kept], [hyp for _, hyp in kept]
    words = jiwer.process_words(references, hypotheses)
    chars = jiwer.process_characters(references, hypotheses)
    return {
        "wer": words.wer, "cer": chars.cer, "samples": len(kept), "empty_references": len(pairs) - len(kept),
        "reference_words": sum(len(ref.split()) for ref in references),
        "substitutions": words.substitutions, "deletions": words.deletions, "insertions": words.insertions,
    }


@dataclass
class EarlyStopping:
    """Rank 0's rule: an evaluation improves when metric < best - min_delta; after `patience` evaluations in a
    row without improvement, stop (patience 0: never stop early)."""

    metric: str = "wer"
    min_delta: float = 0.0
    patience: int = 3
    best: float | None = None
    best_step: int | None = None
    bad_evaluations: int = 0
    history: list[dict] = field(default_factory=list)

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation; True when it is a new best."""
        improved = not math.isnan(value) and (self.best is None or value < self.best - self.min_delta)
        if improved:
            self.best, self.best_step, self.bad_evaluations = value, step, 0
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
    def from_state_dict(cls, state: dict) -> "EarlyStopping":
        return cls(**state)

"""Validation and scoring: `generate()` with the language/task prompt, WER/CER with jiwer on normalised text,
results gathered exactly across ranks, and the early-stopping rule rank 0 applies.

One scoring function (`score`) and one normaliser serve the trainer and the evaluation CLI, so the WER a
model gets in `launch/evaluate.py` equals the WER the trainer logged for it. The CLI's inputs are prepared here
too: a plain corpus becomes temporary shards written by the project's own writer, read by the same loader.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import jiwer
import torch
import webdataset as wds

from wdsbr.corpus import CorpusError, Item, open_corpus
from wdsbr.data import list_shards
from wdsbr.shards import ShardOptions, shard_corpus

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
    def from_state_dict(cls, state: dict) -> "EarlyStopping":
        return cls(**state)


# ---------------------------------------------------------------------------------------- evaluation CLI data
# launch/evaluate.py scores shards, or a plain corpus written to temporary shards by the project's own writer
# (same decoding, same validation), so a folder and the shards made from it give the same numbers.

def eval_data_kind(spec: str) -> str:
    """What `--data` names: "shards" (a folder of .tar, a brace pattern, a .tar, a URL) or "corpus" (a folder of
    ID.wav + ID.txt pairs, or a path<TAB>text .tsv). Raises FileNotFoundError naming the path and the fix."""
    path = Path(spec)
    if path.is_dir() and not any(path.glob("*.tar")):
        try:
            corpus = open_corpus(path)
        except CorpusError as error:
            raise FileNotFoundError(str(error)) from None
        if corpus.kind == "common_voice":
            raise FileNotFoundError(f"{spec}: a Common Voice release has splits; shard it (tools/shard_corpus.py) and "
                                    "pass one split's shards, e.g. shards/test")
        if any(isinstance(entry, Item) for entry in corpus.entries):
            return "corpus"
        split_folders = sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.glob("*.tar")))
        if split_folders:
            raise FileNotFoundError(f"{spec}: holds split folders ({', '.join(split_folders)}); "
                                    f"pass one of them, e.g. {path / split_folders[-1]}")
        raise FileNotFoundError(f"{spec}: folder has no .tar shards and no audio + .txt pairs")
    if path.is_file() and path.suffix.lower() == ".tsv":
        return "corpus"
    if path.is_file() and not path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        raise FileNotFoundError(f"{spec}: not a .tar shard (give shards, a folder of ID.wav + ID.txt pairs or a .tsv)")
    if not path.exists() and "{" not in spec and "://" not in spec and not spec.startswith("pipe:"):
        raise FileNotFoundError(f"{spec}: no such file or folder (give shards or a folder of ID.wav + ID.txt pairs)")
    list_shards(spec)  # raises when a pattern expands to missing files
    return "shards"


def shard_for_evaluation(source: str, output_dir: str, *, workers: int = 1) -> tuple[list[str], list[dict]]:
    """Write a corpus (folder of pairs or .tsv) to shards in `output_dir` with `wdsbr.shards.shard_corpus`, every
    kept input in them whatever split it would get. Returns (shard paths, rejected inputs as manifest rows).
    Raises `wdsbr.shards.ShardError` when nothing could be kept."""
    # wav: the members live only as long as the run, so skip the flac encode; both are lossless PCM-16
    options = ShardOptions(val_fraction=0.0, test_fraction=0.0, audio_format="wav", workers=max(1, workers))
    manifest = shard_corpus(open_corpus(source), output_dir, options, progress=False)
    shards = [str(Path(output_dir) / shard["file"]) for split in manifest["splits"].values() for shard in split["shards"]]
    return shards, manifest["rejected"]


def take_samples(shards: list[str], count: int, output_path: str, on_error: Callable[[Exception], bool]) -> list[str]:
    """The first `count` samples of `shards` in shard order, their raw members copied (not decoded) into one tar
    at `output_path`: a subset that every world size splits the same way. `on_error` is webdataset's handler
    for an unreadable shard (count it and go on)."""
    with wds.TarWriter(output_path, encoder=False, mtime=0) as writer:
        samples = wds.tarfile_to_samples(handler=on_error)({"url": url} for url in shards)
        for index, sample in enumerate(samples):
            if index >= count:
                break
            writer.write({name: value for name, value in sample.items() if name == "__key__" or not name.startswith("__")})
    return [output_path]


def sum_across_ranks(counts: dict[str, float]) -> dict[str, float]:
    """Collective: all ranks. Every rank's counts (audio seconds, skipped samples by reason) summed by name.
    Works unchanged without a process group (one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, counts)
    else:
        parts = [counts]
    total: dict[str, float] = {}
    for part in parts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total

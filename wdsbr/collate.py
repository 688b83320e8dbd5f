"""The padding collator: decoded samples -> the model's batch.

`input_features [B, n_mels, 3000]` (log-mel of the 30 s window, computed batched in torch), `labels [B, L]`
padded with -100 and without the leading decoder-start token (the model prepends it when it shifts the
labels right); when a sample brings its own decoder inputs (a previous-text prompt), `decoder_input_ids [B, L]`
too, the labels aligned to them. Keys, raw transcripts and the batch's audio seconds ride along for validation
and timing.
With `keep_audio` (evaluation with another engine, faster-whisper), the 16 kHz waveforms ride along too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from wdsbr.augment import SpecAugment
from wdsbr.features import log_mel_spectrogram

IGNORE_INDEX = -100  # positions the cross-entropy loss skips


def pad_labels(label_ids: list[list[int]], decoder_start_token_id: int) -> torch.Tensor:
    """Right-pad token id lists with -100, dropping a leading decoder-start token wherever present."""
    rows = [ids[1:] if ids and ids[0] == decoder_start_token_id else ids for ids in label_ids]
    return _pad(rows, IGNORE_INDEX)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    padded = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return padded


def decoder_inputs(samples: list[dict], decoder_start_token_id: int) -> torch.Tensor:
    """The decoder's inputs when some samples bring their own (`decoder_input_ids`: a previous-text prompt, whose
    labels are already aligned to them); the others get what the model would make from their labels, the
    labels shifted right (all but the last token, the start token first). Padding is the start token: its
    positions come after every real one (the decoder is causal) and their labels are -100."""
    rows = [s["decoder_input_ids"] if "decoder_input_ids" in s else s["labels"][:-1] for s in samples]
    return _pad(rows, decoder_start_token_id)


@dataclass
class Collator:
    """Turn a list of decoded samples (`audio`, `labels`, `key`, `text`) into a batch (picklable for workers);
    with `spec_augment` (training only), the features are masked for (seed, epoch, key); with `keep_audio`, the
    batch carries the waveforms (`audio`) instead of features."""

    n_mels: int
    decoder_start_token_id: int
    sample_rate: int = 16_000
    spec_augment: SpecAugment | None = None
    seed: int = 0
    epoch: int = 0
    keep_audio: bool = False

    def __call__(self, samples: list[dict]) -> dict:
        audio = [s["audio"] for s in samples]
        if self.keep_audio:  # another engine computes its own features
            inputs = {"audio": audio}
        else:
            inputs = {"input_features": log_mel_spectrogram(audio, n_mels=self.n_mels)}
            if self.spec_augment is not None:
                self.spec_augment(
                    inputs["input_features"],
                    [len(a) for a in audio],
                    [s["key"] for s in samples],
                    self.seed,
                    self.epoch,
                )
        if any("decoder_input_ids" in s for s in samples):  # --prev-text: prompts the model cannot make from labels
            inputs["decoder_input_ids"] = decoder_inputs(samples, self.decoder_start_token_id)
        return {
            **inputs,
            "labels": pad_labels([s["labels"] for s in samples], self.decoder_start_token_id),
            "keys": [s["key"] for s in samples],
            "texts": [s["text"] for s in samples],
            "audio_seconds": sum(len(a) for a in audio) / self.sample_rate,
            # packed windows (--pack) hold several utterances and silence between them
            "utterances": sum(s.get("utterances", 1) for s in samples),
            "speech_seconds": sum(s.get("speech_seconds", len(s["audio"]) / self.sample_rate) for s in samples),
            # keys of samples this epoch already holds: the wrap-around that fills its last batches, top-ups
            "repeated": [s["key"] for s in samples if s.get("repeat")],
            # utterances by training source (--train-shards NAME=SPEC): what source_samples adds up
            "sources": dict(Counter(name for s in samples for name in s.get("sources", [s.get("source")]) if name)),
        }

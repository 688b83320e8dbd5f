"""Training-time augmentation, each deterministic for (seed, epoch, sample key) so a resumed run sees the very
same augmented batches, each applied by the training stream only (validation and evaluation never see it).

* `SpecAugment`: time and frequency masking on the log-mel features, with the names and meaning of transformers'
  Whisper config fields (`mask_time_prob`, `mask_time_length`, `mask_time_min_masks`, `mask_feature_*`):
  about `prob × length / span` spans of `span` frames (or mel bins) are set to 0, as
  `WhisperModel._mask_input_features` does. Only the frames that hold the clip's audio can be masked: the zero
  padding up to 30 s is not time to mask (it would dilute the masks of short clips to nothing).
* `speed_perturb`: the clip played `factor` times faster (resampled as if recorded at 16 kHz × factor: duration
  and pitch change together, as Kaldi's and torchaudio's speed perturbation), in the DataLoader worker before
  the features. A factor that would push a clip past Whisper's 30 s window is not drawn for it (the clip keeps
  its speed, never cut or skipped).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from wdsbr.audio import SAMPLE_RATE, resample
from wdsbr.features import HOP_LENGTH


def stable_seed(*parts: int | str) -> int:
    """A 64-bit seed that depends on nothing but `parts` (Python's hash() is salted per process): the data order,
    packing, timestamps, previous text and augmentation of a run are drawn from these."""
    return int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:8], "little")


def rng_for(seed: int, epoch: int, key: str, purpose: str) -> np.random.Generator:
    """A generator that depends on nothing but (seed, epoch, key, purpose): the same sample draws the same
    augmentation in every run, whichever rank, worker or batch position it lands in."""
    return np.random.default_rng(stable_seed(seed, epoch, key, purpose))


def _spans(rng: np.random.Generator, length: int, prob: float, span: int, min_masks: int) -> list[tuple[int, int]]:
    """Start and end of the masked spans along an axis of `length` (transformers' `_compute_mask_indices`
    rule: int(prob × length / span + u) spans, u uniform in [0, 1), at least `min_masks`, each inside the axis)."""
    if prob <= 0 or length <= 0:
        return []
    span = min(span, length)
    count = max(min_masks, int(prob * length / span + rng.random()))
    count = min(count, length // span)  # no more spans than fit
    starts = rng.integers(0, length - span + 1, size=count)
    return [(int(start), int(start) + span) for start in starts]


@dataclass(frozen=True)
class SpecAugment:
    """Time and frequency masks (transformers' field names; defaults: its Whisper time masking, and one
    10-bin frequency mask per clip at least)."""

    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.05
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 1

    def __call__(
        self, features: torch.Tensor, audio_samples: list[int], keys: list[str], seed: int, epoch: int
    ) -> torch.Tensor:
        """Mask a batch [B, n_mels, frames] in place: sample b's masks depend on (seed, epoch, keys[b]) only, and
        fall inside its first ceil(audio_samples[b] / 160) frames."""
        n_mels, n_frames = features.shape[1], features.shape[2]
        for row, (samples, key) in enumerate(zip(audio_samples, keys)):
            rng = rng_for(seed, epoch, key, "spec-augment")
            speech_frames = min(n_frames, math.ceil(samples / HOP_LENGTH))
            for start, end in _spans(
                rng, speech_frames, self.mask_time_prob, self.mask_time_length, self.mask_time_min_masks
            ):
                features[row, :, start:end] = 0.0
            for start, end in _spans(
                rng, n_mels, self.mask_feature_prob, self.mask_feature_length, self.mask_feature_min_masks
            ):
                features[row, start:end, :speech_frames] = 0.0
        return features


def parse_speeds(spec: str) -> tuple[float, ...]:
    """`0.9,1.0,1.1` -> (0.9, 1.0, 1.1); ValueError naming the problem otherwise."""
    try:
        speeds = tuple(float(part) for part in spec.split(","))
    except ValueError:
        raise ValueError(f"{spec!r}: give speed factors separated by commas, e.g. 0.9,1.0,1.1") from None
    if not speeds or any(not 0.5 <= speed <= 2.0 for speed in speeds):
        raise ValueError(f"{spec!r}: speed factors must lie between 0.5 and 2.0")
    return speeds


def draw_speed(samples: float, key: str, speeds: tuple[float, ...], seed: int, epoch: int, max_samples: float) -> float:
    """The speed drawn from `speeds` for (seed, epoch, key) for a clip of `samples` samples: factors that would make
    it longer than `max_samples` are left out of the draw (1.0 when none is left). The packing plan draws it too."""
    fitting = [speed for speed in speeds if samples / speed <= max_samples] or [1.0]
    return float(rng_for(seed, epoch, key, "speed").choice(fitting))


def speed_perturb(
    audio: np.ndarray, key: str, speeds: tuple[float, ...], seed: int, epoch: int, max_seconds: float
) -> tuple[np.ndarray, float]:
    """The clip at a speed drawn from `speeds` for (seed, epoch, key) (`draw_speed`); returns (audio, factor)."""
    factor = draw_speed(len(audio), key, speeds, seed, epoch, max_seconds * SAMPLE_RATE)
    if factor == 1.0:
        return audio, factor
    return resample(audio, int(round(SAMPLE_RATE * factor)), SAMPLE_RATE), factor

"""Whisper log-mel features: batched torch on CPU or CUDA, numerically the same as
`transformers.WhisperFeatureExtractor` (the oracle in tests/test_features.py) for 80 and 128 mel bins.

What HF does, per clip: truncate to 30 s, zero-pad to exactly 480000 samples, centred STFT (n_fft 400, hop 160,
periodic Hann, reflect padding) giving 3001 frames, drop the last frame, power -> slaney mel filters ->
log10(max(x, 1e-10)), then per clip `max(x, x.max() - 8)` and `(x + 4) / 4`. No dither (its default is 0).

Why this is faster: most training clips are a few seconds, and every frame that lies entirely in the zero
padding has power 0, so its log-mel is known in advance: log10(1e-10) = -10. We run the STFT only over the
frames that can see a real sample of the longest clip in the batch and fill the rest with -10 before the
per-clip clamp and scaling, which is where padding frames can change (-10 becomes max - 8 if that is larger).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from wdsbr.audio import SAMPLE_RATE, WINDOW_SECONDS

N_FFT = 400
HOP_LENGTH = 160
CHUNK_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)  # 480,000: Whisper's fixed input window
N_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3000
LOG_FLOOR = -10.0  # log10 of the 1e-10 clamp: the value of every all-zero frame


@functools.cache
def _mel_filters(n_mels: int, device: torch.device) -> torch.Tensor:
    """[n_mels, N_FFT // 2 + 1] float32, the same bank as WhisperFeatureExtractor.mel_filters (transposed)."""
    filters = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters.T.copy()).to(device=device, dtype=torch.float32)


@functools.cache
def _hann_window(device: torch.device) -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, dtype=torch.float32, device=device)


def _as_clips(waves) -> torch.Tensor | list[torch.Tensor]:
    """A 2-D [B, samples] tensor or a list of 1-D tensors, each truncated to 30 s (HF's truncation=True)."""
    if isinstance(waves, (torch.Tensor, np.ndarray)) and waves.ndim == 2:
        return torch.as_tensor(waves)[:, :CHUNK_SAMPLES]
    if not isinstance(waves, Sequence) or isinstance(waves, (str, bytes)) or len(waves) == 0:
        raise ValueError("waves must be a non-empty list of 1-D clips or a 2-D [batch, samples] tensor")
    clips = [torch.as_tensor(wave)[:CHUNK_SAMPLES] for wave in waves]
    for index, clip in enumerate(clips):
        if clip.ndim != 1:
            raise ValueError(f"clip {index} has shape {tuple(clip.shape)}; expected 1-D mono samples at 16 kHz")
    return clips


def _zero_padded_batch(clips, n_samples: int, device: torch.device) -> torch.Tensor:
    """float32 [B, n_samples] on `device`: the clips followed by zeros (float64 is cast, as HF does)."""
    if isinstance(clips, torch.Tensor):
        batch = clips.to(device=device, dtype=torch.float32)
        return torch.nn.functional.pad(batch, (0, n_samples - batch.shape[1]))
    # Assemble on the CPU and move once: one host-to-device copy instead of one per clip.
    batch = torch.zeros(len(clips), n_samples, dtype=torch.float32)
    for row, clip in zip(batch, clips):
        row[: clip.shape[0]].copy_(clip)
    return batch.to(device)


def log_mel_spectrogram(
    waves: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    n_mels: int = 80,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Whisper log-mel features of 16 kHz mono clips: float32 [B, n_mels, 3000] on `device` (default CPU).

    `waves` is a list of 1-D float arrays/tensors of any lengths or a 2-D [B, samples] tensor. Clips longer than
    30 s are truncated to their first 480000 samples, shorter ones behave as if zero-padded to 30 s.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    clips = _as_clips(waves)
    longest = clips.shape[1] if isinstance(clips, torch.Tensor) else max(clip.shape[0] for clip in clips)

    # Frame t covers samples [t*HOP - N_FFT/2, t*HOP + N_FFT/2); it sees real data only while
    # t*HOP - N_FFT/2 < longest, so the first `n_frames` frames are all we need to compute.
    n_frames = min(math.ceil((longest + N_FFT // 2) / HOP_LENGTH), N_FRAMES)
    # Pad to n_frames*HOP samples (>= longest + N_FFT/2): the end reflect padding of torch.stft then mirrors
    # only zeros into the frames we keep, exactly as in HF's 480000-sample zero-padded signal. Capped at 30 s,
    # where this is HF's own computation.
    n_samples = min(n_frames * HOP_LENGTH, CHUNK_SAMPLES)
    batch = _zero_padded_batch(clips, n_samples, device)

    stft = torch.stft(
        batch, N_FFT, HOP_LENGTH, window=_hann_window(device), center=True, pad_mode="reflect", return_complex=True
    )
    # stft has n_samples/HOP + 1 frames; keep the first n_frames (at 30 s that drops the last one, like HF).
    stft = stft[..., :n_frames]
    # |z|^2 as re^2 + im^2: 3x faster on CPU than HF's abs()**2 (complex abs is a careful hypot), and agrees
    # to float32 rounding. In-place ops from here on: on CPU, fresh memory (page faults) costs about as much
    # as the arithmetic.
    power = stft.real.square().addcmul_(stft.imag, stft.imag)
    mel = _mel_filters(n_mels, device) @ power  # [B, n_mels, n_frames]

    features = torch.full((batch.shape[0], n_mels, N_FRAMES), LOG_FLOOR, dtype=torch.float32, device=device)
    features[..., :n_frames] = mel.clamp_(min=1e-10).log10_()
    # Per-clip dynamic range of 80 dB below the clip's loudest bin (padding frames included, as in HF).
    clip_max = features.amax(dim=(1, 2), keepdim=True)
    torch.maximum(features, clip_max - 8.0, out=features)
    return features.add_(4.0).div_(4.0)

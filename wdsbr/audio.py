"""Audio in and out: decode any file or bytes libsndfile reads (wav, flac, ogg, mp3), mix to mono, resample to
16 kHz with soxr, and encode 16-bit PCM flac/wav for the shards.

Everything returns float32 numpy arrays in [-1, 1]. Problems raise `AudioError` with a message that says what
is wrong, so callers can record it as a rejection reason.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000  # Whisper's input rate
WINDOW_SECONDS = 30.0  # Whisper's fixed input window
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


class AudioError(ValueError):
    """Audio that cannot be decoded or is unusable (empty, truncated, not audio)."""


class EmptyAudioError(AudioError):
    """Audio that decodes but holds no samples (an `AudioError`, so existing handlers still catch it)."""


def decode_audio(source: str | Path | bytes | BinaryIO) -> tuple[np.ndarray, int]:
    """Decode a file path, bytes or file object to (float32 mono samples, native sample rate)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        samples, sample_rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        # libsndfile says e.g. "Format not recognised." or "Unspecified internal error."
        raise AudioError(f"unreadable audio: {error}".rstrip(".")) from None
    if samples.shape[0] == 0:
        raise EmptyAudioError("audio has no samples (empty or truncated)")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(sample_rate)


def probe_seconds(source: str | Path | bytes | BinaryIO) -> float | None:
    """Duration from the file header, without decoding; None when the header cannot be read or says nothing.

    Lets a caller refuse an hour-long file before decoding it into memory. Headers can be approximate
    (VBR mp3), so use it with a margin and measure the decoded samples for the real check.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.samplerate <= 0 or info.frames <= 0:
        return None
    return info.frames / info.samplerate


def resample(samples: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality); a no-op when the rates already match."""
    if orig_rate == target_rate:
        return samples
    return soxr.resample(samples, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(source: str | Path | bytes | BinaryIO, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode and resample to `sample_rate` mono float32."""
    samples, native_rate = decode_audio(source)
    return resample(samples, native_rate, sample_rate)


def encode_audio(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, audio_format: str = "flac") -> bytes:
    """Encode mono float32 samples as 16-bit PCM `flac` or `wav` bytes (clipped to [-1, 1])."""
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio format must be 'flac' or 'wav', not {audio_format!r}")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format=audio_format.upper(), subtype="PCM_16")
    return buffer.getvalue()

"""Audio decode, mono mix-down, resampling to 16 kHz and PCM-16 encoding."""

import io

import numpy as np
import pytest
import soundfile as sf
from conftest import speech_like

from wdsbr.audio import AudioError, decode_audio, encode_audio, load_audio


def _file_bytes(samples: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k_with_its_duration(rate):
    audio = load_audio(_file_bytes(speech_like(2.0, rate), rate, "WAV"))
    assert audio.dtype == np.float32
    assert abs(len(audio) - 32000) <= 2


def test_stereo_is_mixed_to_mono():
    left = speech_like(1.0, seed=1)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    audio = load_audio(_file_bytes(stereo, 16000, "WAV"))
    assert audio.ndim == 1
    np.testing.assert_allclose(audio, left / 2, atol=1e-4)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats_decode(fmt):
    audio, rate = decode_audio(_file_bytes(speech_like(1.0, 48000), 48000, fmt))
    assert rate == 48000 and abs(len(audio) - 48000) < 2000  # mp3 adds encoder delay


def test_encode_roundtrip_is_pcm16_exact():
    audio = speech_like(1.0)
    for fmt in ("flac", "wav"):
        decoded, rate = decode_audio(encode_audio(audio, 16000, fmt))
        assert rate == 16000
        np.testing.assert_allclose(decoded, audio, atol=1 / 32768 + 1e-7)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "unreadable audio"),
        (b"this is not audio at all" * 10, "unreadable audio"),
    ],
)
def test_garbage_raises_a_clear_audio_error(data, message):
    with pytest.raises(AudioError, match=message):
        decode_audio(data)


def test_truncated_flac_is_an_audio_error_or_shorter():
    data = encode_audio(speech_like(2.0), 16000, "flac")
    with pytest.raises(AudioError):
        decode_audio(data[:40])  # header cut: nothing decodable

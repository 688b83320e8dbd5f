"""wdsbr.features: Whisper log-mel features checked against transformers.WhisperFeatureExtractor as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.whisper import feature_extraction_whisper

from wdsbr.audio import SAMPLE_RATE
from wdsbr.features import CHUNK_SAMPLES, N_FRAMES, log_mel_spectrogram

TOLERANCE = 1e-3  # log-mel units; HF's numpy path is float64, ours float32


def synth_speech(seconds: float, seed: int) -> np.ndarray:
    """Speech-like float32 audio: syllables of a voiced source (sawtooth at a gliding 90-250 Hz pitch) shaped by
    vowel formants, noise-burst consonants, pauses (some exactly zero, some faint noise), attack/decay envelopes."""
    rng = np.random.default_rng(seed)
    n_samples = round(seconds * SAMPLE_RATE)
    # Pitch contour: random knots every 250 ms, linearly interpolated; the sawtooth's phase integrates it.
    knots = rng.uniform(90.0, 250.0, size=int(seconds * 4) + 2)
    f0 = np.interp(np.arange(n_samples), np.linspace(0, n_samples, len(knots)), knots)
    voiced_source = 2.0 * ((np.cumsum(f0) / SAMPLE_RATE) % 1.0) - 1.0
    vowel_formants = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]

    def shape(segment: np.ndarray, peaks_hz, bandwidth_hz: float) -> np.ndarray:
        """Filter in the frequency domain with a sum of resonance peaks (no scipy needed)."""
        freqs = np.fft.rfftfreq(len(segment), 1 / SAMPLE_RATE)
        response = sum(1.0 / (1.0 + ((freqs - peak) / (bandwidth_hz / 2)) ** 2) for peak in peaks_hz)
        return np.fft.irfft(np.fft.rfft(segment) * response, n=len(segment))

    audio = np.zeros(n_samples)
    position = 0
    while position < n_samples:
        if rng.random() < 0.5:  # consonant: a short burst of high-frequency noise
            length = int(rng.uniform(0.03, 0.12) * SAMPLE_RATE)
            burst = shape(rng.standard_normal(length), rng.uniform(2500, 6500, size=2), 1500.0)
            end = min(position + length, n_samples)
            audio[position:end] = 0.3 * burst[: end - position] / (np.abs(burst).max() + 1e-9)
            position = end
        length = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)  # vowel
        end = min(position + length, n_samples)
        if end > position:
            vowel = shape(voiced_source[position:end], vowel_formants[rng.integers(len(vowel_formants))], 120.0)
            envelope = np.sin(np.linspace(0, np.pi, end - position)) ** 0.5
            audio[position:end] = rng.uniform(0.05, 0.6) * envelope * vowel / (np.abs(vowel).max() + 1e-9)
        position = end
        if rng.random() < 0.3:  # pause: digital silence or faint room noise
            length = int(rng.uniform(0.05, 0.4) * SAMPLE_RATE)
            end = min(position + length, n_samples)
            if rng.random() < 0.5:
                audio[position:end] = 1e-4 * rng.standard_normal(end - position)
            position = end
    return audio.astype(np.float32)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """One batch of mixed lengths: very short, typical Common Voice, exactly 30 s, and 35 s (truncated)."""
    return [synth_speech(seconds, seed) for seed, seconds in enumerate([0.2, 3.0, 4.4, 6.0, 30.0, 35.0])]


def hf_features(clips, n_mels: int, numpy_path: bool, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """The oracle. With torch installed HF takes its torch path; `numpy_path` forces the pure-numpy one."""
    if numpy_path:
        monkeypatch.setattr(feature_extraction_whisper, "is_torch_available", lambda: False)
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    features = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    monkeypatch.undo()
    return features


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("numpy_path", [True, False], ids=["hf-numpy", "hf-torch"])
def test_matches_hf_extractor_on_speech_of_mixed_lengths(clips, n_mels, numpy_path, monkeypatch):
    expected = hf_features(clips, n_mels, numpy_path, monkeypatch)
    ours = log_mel_spectrogram(clips, n_mels=n_mels)
    assert ours.shape == (len(clips), n_mels, N_FRAMES) == expected.shape
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert np.abs(ours.numpy() - expected).max() <= TOLERANCE


def test_matches_hf_when_clip_ends_on_and_around_frame_boundaries(monkeypatch):
    # The shortened STFT must see exactly the zeros HF sees after the clip; lengths are chosen around the
    # hop (160), the half window (200) and the 30 s end, with loud noise up to the last sample.
    lengths = [1, 159, 160, 199, 200, 201, 360, 3039, 3040, 3041, 479_640, 479_799, 479_800, 479_801, 479_999]
    rng = np.random.default_rng(7)
    clips = [rng.uniform(-0.5, 0.5, size=length).astype(np.float32) for length in lengths]
    expected = hf_features(clips, 80, numpy_path=True, monkeypatch=monkeypatch)
    assert np.abs(log_mel_spectrogram(clips).numpy() - expected).max() <= TOLERANCE


@pytest.mark.parametrize("numpy_path", [True, False], ids=["hf-numpy", "hf-torch"])
@pytest.mark.parametrize(
    "lengths",
    [
        [1],
        [159],
        [160],
        [199, 160],
        [200, 1],
        [201],
        [360, 199],
        [3039],
        [3040, 3039],
        [3041, 200],
        [48_000, 16_000, 3041],
    ],
    ids=lambda lengths: f"longest-{max(lengths)}",
)
def test_batches_whose_longest_clip_is_short_take_the_shortened_stft_and_match_hf(lengths, numpy_path, monkeypatch):
    """Each batch's longest clip decides how many frames are computed: here it ends on or around the hop (160),
    the half window (200) and a few frames, so the STFT runs on far fewer than 480000 samples (recorded below)."""
    rng = np.random.default_rng(len(lengths) * 1000 + max(lengths))
    batch = [rng.uniform(-0.5, 0.5, size=length).astype(np.float32) for length in lengths]
    widths = []
    real_stft = torch.stft

    def recording_stft(signal, *args, **kwargs):
        widths.append(signal.shape[-1])
        return real_stft(signal, *args, **kwargs)

    monkeypatch.setattr(torch, "stft", recording_stft)
    ours = log_mel_spectrogram(batch).numpy()
    monkeypatch.undo()
    longest = max(lengths)
    assert widths == [min(math.ceil((longest + 200) / 160), N_FRAMES) * 160] and widths[0] < CHUNK_SAMPLES
    expected = hf_features(batch, 80, numpy_path=numpy_path, monkeypatch=monkeypatch)
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_all_zero_clip_matches_hf(clips, monkeypatch):
    batch = [np.zeros(SAMPLE_RATE * 2, dtype=np.float32), clips[1]]
    expected = hf_features(batch, 80, numpy_path=True, monkeypatch=monkeypatch)
    ours = log_mel_spectrogram(batch).numpy()
    assert np.abs(ours - expected).max() <= TOLERANCE
    assert np.all(ours[0] == (-10.0 + 4.0) / 4.0)  # silence is the log floor everywhere


def test_batch_gives_the_same_features_as_one_clip_at_a_time(clips):
    batched = log_mel_spectrogram(clips)
    for index, clip in enumerate(clips):
        torch.testing.assert_close(batched[index : index + 1], log_mel_spectrogram([clip]), rtol=0, atol=1e-5)


def test_clip_longer_than_30_s_uses_its_first_30_s(clips):
    long_clip = clips[-1]
    assert len(long_clip) > CHUNK_SAMPLES
    torch.testing.assert_close(log_mel_spectrogram([long_clip]), log_mel_spectrogram([long_clip[:CHUNK_SAMPLES]]))


def test_accepts_a_2d_tensor_torch_clips_and_float64_arrays(clips):
    same_length = [clip[: SAMPLE_RATE * 3] for clip in clips[1:4]]
    expected = log_mel_spectrogram(same_length)
    torch.testing.assert_close(log_mel_spectrogram(torch.from_numpy(np.stack(same_length))), expected)
    torch.testing.assert_close(log_mel_spectrogram([torch.from_numpy(clip) for clip in same_length]), expected)
    torch.testing.assert_close(log_mel_spectrogram([clip.astype(np.float64) for clip in same_length]), expected)


def test_rejects_multichannel_clips_and_empty_batches():
    with pytest.raises(ValueError, match="clip 1 has shape"):
        log_mel_spectrogram([np.zeros(1600, np.float32), np.zeros((2, 1600), np.float32)])
    with pytest.raises(ValueError, match="non-empty list"):
        log_mel_spectrogram([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n_mels", [80, 128])
def test_cuda_matches_hf_and_stays_on_the_gpu(clips, n_mels, monkeypatch):
    expected = hf_features(clips, n_mels, numpy_path=True, monkeypatch=monkeypatch)
    ours = log_mel_spectrogram(clips, n_mels=n_mels, device="cuda")
    assert ours.device.type == "cuda" and ours.shape == expected.shape
    assert np.abs(ours.cpu().numpy() - expected).max() <= TOLERANCE

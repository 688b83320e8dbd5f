"""Training-time augmentation: SpecAugment masks only the frames that hold audio, speed perturbation changes the
duration by its factor, both are deterministic for (seed, epoch, key) so a resume is exact, and validation never
sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import speech_like, write_plain_shards

from wdsbr.augment import SpecAugment, _spans, parse_speeds, rng_for, speed_perturb
from wdsbr.data import LoaderOptions, make_eval_loader, make_train_loader
from wdsbr.features import log_mel_spectrogram


def _features(seconds: list[float]) -> torch.Tensor:
    return log_mel_spectrogram([speech_like(s, seed=i) for i, s in enumerate(seconds)], n_mels=80)


def test_masks_fall_only_inside_each_clips_own_frames():
    seconds = [1.0, 2.5]
    plain = _features(seconds)
    masked = SpecAugment(mask_time_prob=0.5, mask_feature_prob=0.2)(
        plain.clone(), [int(s * 16000) for s in seconds], ["a", "b"], seed=0, epoch=0
    )
    for row, s in enumerate(seconds):
        frames = int(np.ceil(s * 16000 / 160))
        changed = masked[row] != plain[row]
        assert torch.equal(masked[row, :, frames:], plain[row, :, frames:])  # the padding to 30 s is never masked
        assert changed[:, :frames].any()
        time_masked = (masked[row, :, :frames] == 0).all(dim=0).sum().item()
        assert 0.2 * frames <= time_masked <= 0.6 * frames  # about mask_time_prob of the clip's frames, not of 30 s
        assert torch.all(masked[row][changed] == 0)  # masked values are 0, as transformers' _mask_input_features


def test_the_masks_depend_on_seed_epoch_and_key_only():
    plain = _features([2.0])
    augment = SpecAugment()

    def mask(key: str, seed: int, epoch: int) -> torch.Tensor:
        return augment(plain.clone(), [32000], [key], seed=seed, epoch=epoch)

    assert torch.equal(mask("k", 1, 0), mask("k", 1, 0))
    assert not torch.equal(mask("k", 1, 0), mask("k", 1, 1))  # a new epoch draws new masks
    assert not torch.equal(mask("k", 1, 0), mask("other", 1, 0))


def test_span_counts_follow_the_transformers_rule():
    rng = np.random.default_rng(0)
    counts = [len(_spans(rng, 1000, 0.05, 10, 2)) for _ in range(200)]
    assert set(counts) <= {5, 6} and min(len(_spans(rng, 30, 0.05, 10, 2)) for _ in range(20)) == 2  # min masks
    assert _spans(rng, 100, 0.0, 10, 2) == [] and all(e - s == 10 for s, e in _spans(rng, 100, 0.3, 10, 0))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_the_duration_by_the_factor(factor):
    audio = speech_like(2.0)
    faster, drawn = speed_perturb(audio, "k", (factor,), seed=0, epoch=0, max_seconds=30.0)
    assert drawn == factor and abs(len(faster) - len(audio) / factor) <= 2


def test_speed_perturbation_never_pushes_a_clip_past_the_window_and_is_deterministic():
    long = np.zeros(int(28.5 * 16000), dtype=np.float32)
    assert speed_perturb(long, "k", (0.9,), seed=0, epoch=0, max_seconds=30.0)[1] == 1.0  # 31.7 s would not fit
    draws = [
        speed_perturb(speech_like(0.5), f"k{i}", (0.9, 1.0, 1.1), seed=3, epoch=0, max_seconds=30.0)[1]
        for i in range(30)
    ]
    assert draws == [
        speed_perturb(speech_like(0.5), f"k{i}", (0.9, 1.0, 1.1), seed=3, epoch=0, max_seconds=30.0)[1]
        for i in range(30)
    ]
    assert set(draws) == {0.9, 1.0, 1.1}
    assert rng_for(3, 0, "k", "speed").random() != rng_for(3, 1, "k", "speed").random()


def test_bad_speed_factors_are_one_clear_error():
    assert parse_speeds("0.9,1.0,1.1") == (0.9, 1.0, 1.1)
    with pytest.raises(ValueError, match="separated by commas"):
        parse_speeds("0.9;1.1")
    with pytest.raises(ValueError, match="between 0.5 and 2.0"):
        parse_speeds("0.9,3")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_plain_shards(tmp_path_factory.mktemp("augment"), [5, 3], seconds=0.8)


@pytest.fixture(scope="module")
def prompt(tiny_processor):
    return list(tiny_processor.tokenizer.prefix_tokens)


def _batches(shards, tiny_processor, prompt, start_batch=0, **kwargs):
    options = LoaderOptions(
        tiny_processor.tokenizer,
        prompt,
        n_mels=80,
        micro_batch_size=1,  # one clip a batch:
        num_workers=0,
        shuffle_buffer=4,
        seed=1,
        **kwargs,
    )  # its own duration
    loader = make_train_loader(shards, options, start_batch=start_batch)
    return [(batch["keys"], batch["input_features"], batch["audio_seconds"]) for batch in loader]


def test_the_training_stream_augments_validation_does_not_and_a_resume_sees_the_same_augmented_batches(
    shards, tiny_processor, prompt
):
    plain = _batches(shards, tiny_processor, prompt)
    augmented = _batches(shards, tiny_processor, prompt, spec_augment=True, speed_perturb="0.8,1.25")
    assert [keys for keys, _, _ in augmented] == [keys for keys, _, _ in plain]  # same samples, same order
    assert all(abs(a - p) > 0.15 for (_, _, a), (_, _, p) in zip(augmented, plain))  # every clip sped up or slowed
    assert all(not torch.equal(a, p) for (_, a, _), (_, p, _) in zip(augmented, plain))
    resumed = _batches(shards, tiny_processor, prompt, spec_augment=True, speed_perturb="0.8,1.25", start_batch=2)
    for (keys, features, _), (want_keys, want, _) in zip(resumed, augmented[2:], strict=True):
        assert keys == want_keys and torch.equal(features, want)
    evaluated = {}
    for batch in make_eval_loader(
        shards, LoaderOptions(tiny_processor.tokenizer, prompt, n_mels=80, micro_batch_size=2, num_workers=0)
    ):
        evaluated.update(zip(batch["keys"], batch["input_features"]))
    for keys, features, _ in plain:  # validation's features are the plain log-mel of the clip
        for key, row in zip(keys, features):
            assert torch.equal(evaluated[key], row)

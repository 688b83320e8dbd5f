"""The padding collator: features of the 30 s window, labels padded with -100 without the start token."""

import numpy as np
import torch
from conftest import speech_like

from wdsbr.collate import IGNORE_INDEX, Collator, pad_labels


def test_labels_are_padded_with_ignore_index_and_lose_the_start_token():
    labels = pad_labels([[50258, 7, 8, 9], [50258, 7]], decoder_start_token_id=50258)
    assert labels.tolist() == [[7, 8, 9], [7, IGNORE_INDEX, IGNORE_INDEX]]


def test_start_token_is_dropped_only_where_present():
    labels = pad_labels([[1, 5], [5, 6, 7]], decoder_start_token_id=1)
    assert labels.tolist() == [[5, IGNORE_INDEX, IGNORE_INDEX], [5, 6, 7]]


def test_batch_has_window_features_labels_and_metadata():
    samples = [
        {"audio": speech_like(1.5, seed=1), "labels": [9, 1, 2, 3], "key": "a", "text": "Demat"},
        {"audio": speech_like(4.0, seed=2), "labels": [9, 1], "key": "b", "text": "Kenavo"},
    ]
    batch = Collator(n_mels=80, decoder_start_token_id=9)(samples)
    assert batch["input_features"].shape == (2, 80, 3000)
    assert batch["input_features"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1, 2, 3], [1, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["keys"] == ["a", "b"] and batch["texts"] == ["Demat", "Kenavo"]
    assert np.isclose(batch["audio_seconds"], 5.5)

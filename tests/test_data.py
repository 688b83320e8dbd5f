"""The streaming loaders: shard lists, equal training batches on every rank, exact-once validation, resume,
and bad samples skipped and counted."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil  # DeepSpeed's dependency
import pytest
import soundfile as sf
from conftest import WORDS, serve_folder, speech_like, write_plain_shards, write_speech_corpus

from wdsbr.corpus import open_corpus
from wdsbr.data import (
    PACK_GAP_SECONDS,
    EpochStream,
    LoaderOptions,
    SkipCounter,
    Source,
    _epoch_segments,
    _interleave,
    _pack,
    batches_per_epoch,
    make_eval_loader,
    make_train_loader,
    parse_source,
)
from wdsbr.shards import ShardOptions, shard_corpus
from wdsbr.streams import count_seconds, list_shards


def _shard(tmp_path: Path, n: int, samples_per_shard: int, name: str = "shards") -> Path:
    corpus = write_speech_corpus(tmp_path / f"corpus-{name}", n)
    out = tmp_path / name
    shard_corpus(
        open_corpus(corpus),
        out,
        ShardOptions(val_fraction=0.0, test_fraction=0.0, samples_per_shard=samples_per_shard, workers=1),
        progress=False,
    )
    return out / "train"


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory) -> Path:
    """17 samples in 3 shards of 7, 7 and 3: uneven, and fewer shards than 2 ranks × 2 workers."""
    return _shard(tmp_path_factory.mktemp("data"), 17, samples_per_shard=7)


@pytest.fixture(scope="module")
def prompt(tiny_processor) -> list[int]:
    return list(tiny_processor.tokenizer.prefix_tokens)


def _train_keys(
    shards,
    tiny_processor,
    prompt,
    *,
    rank=0,
    world_size=1,
    num_workers=0,
    micro_batch_size=2,
    epoch=0,
    start_batch=0,
    **kwargs,
) -> list[list[str]]:
    options = LoaderOptions(
        tiny_processor.tokenizer,
        prompt,
        n_mels=80,
        micro_batch_size=micro_batch_size,
        num_workers=num_workers,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=8,
        **kwargs,
    )
    loader = make_train_loader(shards, options, epoch=epoch, start_batch=start_batch)
    return [batch["keys"] for batch in loader]


def _eval_keys(shards, tiny_processor, prompt, *, rank, world_size, num_workers) -> list[str]:
    loader = make_eval_loader(
        shards,
        LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=3,
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
        ),
    )
    return [key for batch in loader for key in batch["keys"]]


# ------------------------------------------------------------------------------------------------- training


def test_pipe_urls_stream(uneven_shards, tiny_processor, prompt):
    keys = _train_keys(
        f"pipe:cat {uneven_shards}/shard-{{000000..000002}}.tar", tiny_processor, prompt, epoch_samples=17
    )
    assert len(keys) == batches_per_epoch(17, 2, 1) == 9


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_rank_gets_the_same_number_of_batches_with_uneven_shards(
    uneven_shards, tiny_processor, prompt, num_workers
):
    per_rank = [
        _train_keys(uneven_shards, tiny_processor, prompt, rank=r, world_size=2, num_workers=num_workers)
        for r in range(2)
    ]
    expected = batches_per_epoch(17, 2, 2)
    assert expected == 5
    assert [len(batches) for batches in per_rank] == [expected, expected]
    assert all(len(batch) == 2 for batches in per_rank for batch in batches)


def test_a_batch_is_log_mel_features_and_prompted_labels(uneven_shards, tiny_processor, prompt):
    loader = make_train_loader(
        uneven_shards, LoaderOptions(tiny_processor.tokenizer, prompt, n_mels=80, micro_batch_size=3, num_workers=0)
    )
    batch = next(iter(loader))
    assert batch["input_features"].shape == (3, 80, 3000)
    tokenizer = tiny_processor.tokenizer
    for labels, text in zip(batch["labels"], batch["texts"]):
        ids = labels[labels != -100].tolist()
        # the start token is dropped (the model prepends it); the prompt follows, then the cleaned text
        assert tokenizer.convert_ids_to_tokens(ids[:3]) == ["<|br|>", "<|transcribe|>", "<|notimestamps|>"]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[3:-1]) == text.lower().rstrip("!")


def test_the_stream_is_deterministic_for_a_seed_and_changes_with_the_epoch(uneven_shards, tiny_processor, prompt):
    first = _train_keys(uneven_shards, tiny_processor, prompt, seed=3, num_workers=2)
    assert _train_keys(uneven_shards, tiny_processor, prompt, seed=3, num_workers=2) == first
    assert _train_keys(uneven_shards, tiny_processor, prompt, seed=3, num_workers=2, epoch=1) != first


@pytest.mark.parametrize("num_workers, start_batch", [(0, 3), (2, 3), (2, 4)])
def test_resuming_mid_epoch_continues_with_exactly_the_batches_not_yet_seen(
    uneven_shards, tiny_processor, prompt, num_workers, start_batch
):
    full = _train_keys(uneven_shards, tiny_processor, prompt, num_workers=num_workers, rank=1, world_size=2, seed=5)
    resumed = _train_keys(
        uneven_shards,
        tiny_processor,
        prompt,
        num_workers=num_workers,
        rank=1,
        world_size=2,
        seed=5,
        start_batch=start_batch,
    )
    assert resumed == full[start_batch:]


@pytest.fixture(scope="module")
def issue_shards(tmp_path_factory) -> list[str]:
    """44 samples in 6 shards of 14, 6, 1, 9, 3 and 11, written with plain webdataset (no manifest)."""
    return write_plain_shards(tmp_path_factory.mktemp("issue-16"), [14, 6, 1, 9, 3, 11], seconds=0.3)


def _epoch(
    shards, tiny_processor, prompt, *, world_size=2, num_workers=2, micro_batch_size=2, epoch=0, start_batch=0, **kwargs
):
    """Every rank's batches of one epoch: [rank][batch] -> (keys, repeated keys)."""
    batches = []
    for rank in range(world_size):
        options = LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            num_workers=num_workers,
            micro_batch_size=micro_batch_size,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=8,
            **kwargs,
        )
        loader = make_train_loader(shards, options, epoch=epoch, start_batch=start_batch)
        batches.append([(batch["keys"], batch["repeated"]) for batch in loader])
    return batches


def _check_contract(epoch, all_keys: set[str], world_size: int, micro_batch_size: int) -> int:
    """The issue-16 contract, key by key; returns how many samples the epoch repeated."""
    n = len(all_keys)
    batches = batches_per_epoch(n, micro_batch_size, world_size)
    assert [len(rank) for rank in epoch] == [batches] * world_size  # the same number of batches on every rank
    assert all(len(keys) == micro_batch_size for rank in epoch for keys, _ in rank)  # every batch full
    seen = Counter(key for rank in epoch for keys, _ in rank for key in keys)
    assert set(seen) == all_keys  # every sample in a batch of the epoch
    extra = Counter({key: count - 1 for key, count in seen.items() if count > 1})
    assert sum(extra.values()) == world_size * batches * micro_batch_size - n <= world_size * micro_batch_size - 1
    flagged = Counter(key for rank in epoch for _, repeated in rank for key in repeated)
    assert flagged == extra  # the batches name exactly the repeats
    return sum(extra.values())


@pytest.mark.parametrize("micro_batch_size", [2, 3, 5])
def test_an_epoch_holds_every_sample_once_and_the_same_batches_on_every_rank(
    issue_shards, tiny_processor, prompt, micro_batch_size
):
    # uneven sizes (a 1-sample shard among them), 2 ranks × 2 workers: before, 18 once, 13 repeated, 13 never
    all_keys = {f"s{shard}_{i:03d}" for shard, size in enumerate([14, 6, 1, 9, 3, 11]) for i in range(size)}
    epoch = _epoch(issue_shards, tiny_processor, prompt, micro_batch_size=micro_batch_size)
    repeats = _check_contract(epoch, all_keys, 2, micro_batch_size)
    assert repeats == {2: 0, 3: 4, 5: 6}[micro_batch_size]


def test_fewer_shards_than_readers_and_one_shard_alone_still_make_an_exact_epoch(
    uneven_shards, tiny_processor, prompt, tmp_path
):
    everything = set(_eval_keys_all(uneven_shards, tiny_processor, prompt))
    _check_contract(_epoch(uneven_shards, tiny_processor, prompt), everything, 2, 2)  # 3 shards, 4 readers
    [single] = write_plain_shards(tmp_path / "one", [9])
    _check_contract(
        _epoch([single], tiny_processor, prompt, micro_batch_size=3), {f"s0_{i:03d}" for i in range(9)}, 2, 3
    )


def _eval_keys_all(shards, tiny_processor, prompt) -> list[str]:
    return _eval_keys(shards, tiny_processor, prompt, rank=0, world_size=1, num_workers=0)


@pytest.mark.parametrize("start_batch", [2, 5])
def test_a_resumed_epoch_is_the_rest_of_the_same_exact_epoch(issue_shards, tiny_processor, prompt, start_batch):
    full = _epoch(issue_shards, tiny_processor, prompt, micro_batch_size=3, seed=4)
    resumed = _epoch(issue_shards, tiny_processor, prompt, micro_batch_size=3, seed=4, start_batch=start_batch)
    assert resumed == [rank[start_batch:] for rank in full]
    before = [rank[:start_batch] for rank in full]
    all_keys = {key for rank in full for keys, _ in rank for key in keys}
    _check_contract([b + r for b, r in zip(before, resumed)], all_keys, 2, 3)


def test_successive_epochs_read_the_shards_in_different_orders(issue_shards, tiny_processor, prompt):
    orders = [
        [keys for keys, _ in _epoch(issue_shards, tiny_processor, prompt, world_size=1, num_workers=0, epoch=e)[0]]
        for e in range(3)
    ]
    assert orders[0] != orders[1] != orders[2] != orders[0]
    firsts = {tuple(sorted({key.split("_")[0] for key in order[0]})) for order in orders}
    assert len(firsts) > 1  # not only shuffled within the buffer: the shard sequence itself moved


def test_the_epoch_stream_is_the_exact_epochs_back_to_back_the_next_started_before_the_last_ends(
    issue_shards, tiny_processor, prompt
):
    """From a resumed position (epoch 1, batch 2) on, three epochs' batches in order, each epoch's exactly what its
    own loader gives; the next epoch's loader is made `lookahead` batches before the current one ends, its workers
    spawned (in a thread) and running while the last batches are used; closing the stream ends every worker."""
    options = LoaderOptions(
        tiny_processor.tokenizer, prompt, n_mels=80, num_workers=2, micro_batch_size=3, shuffle_buffer=8, seed=4
    )
    made, early, yielded = [], [], 0

    def make(epoch: int, start: int):  # the next epoch's is made in the stream's thread
        made.append((epoch, start))
        return make_train_loader(issue_shards, options, epoch=epoch, start_batch=start)

    stream = EpochStream(make, epoch=1, start_batch=2, lookahead=3)
    iterator, got, begun = iter(stream), [], []
    for epoch, batch in iterator:
        got.append((epoch, batch["keys"]))
        for upcoming, (thread, started) in stream.pending.items():  # near a boundary: made and spawned in a thread
            if upcoming not in dict(begun):
                begun.append((upcoming, yielded))
            thread.join()
            early.append(all(w.is_alive() for w in started[0][1]._workers) and epoch in stream.running)
        yielded += 1
        if epoch == 3:
            break
    per_epoch = make_train_loader(issue_shards, options, epoch=1).batches_per_rank
    one = functools.partial(_epoch, issue_shards, tiny_processor, prompt, world_size=1, micro_batch_size=3, seed=4)
    expected = [(1, keys) for keys, _ in one(epoch=1, start_batch=2)[0]]
    expected += [(epoch, keys) for epoch in (2, 3) for keys, _ in one(epoch=epoch)[0]]
    assert got == expected[: len(got)] and len(got) == 2 * per_epoch - 2 + 1
    assert made == [(1, 2), (2, 0), (3, 0)]
    assert begun == [(2, per_epoch - 2 - 3), (3, 2 * per_epoch - 2 - 3)]  # `lookahead` batches before the end
    assert early and all(early)  # spawned and alive while the epoch before them still trained
    workers = [w for _, batches in stream.running.values() for w in batches._workers]
    assert workers and all(w.is_alive() for w in workers)
    iterator.close()
    assert not stream.running and not any(w.is_alive() for w in workers)


def test_bad_samples_are_counted_and_their_places_topped_up_with_named_repeats(
    uneven_shards, tmp_path, tiny_processor, prompt
):
    bad = _corrupt_copy(uneven_shards, tmp_path)  # no manifest beside the copy: counts from the tar headers
    counter = SkipCounter()
    epoch = _epoch(bad, tiny_processor, prompt, skip_counter=counter)
    assert [len(rank) for rank in epoch] == [len(epoch[0])] * 2 and all(len(k) == 2 for r in epoch for k, _ in r)
    flagged = [key for rank in epoch for _, repeated in rank for key in repeated]
    assert counter.total() >= 1 and flagged  # the readers that lost samples filled their batches, and said so


def test_shards_over_http_make_the_same_exact_epoch_and_a_404_is_counted_not_fatal(
    uneven_shards, tiny_processor, prompt
):
    root = uneven_shards.parent  # the shard tool's folder: manifest.json above train/
    local = _epoch(uneven_shards, tiny_processor, prompt, seed=2)
    with serve_folder(root) as url:
        pattern = f"{url}/train/shard-{{000000..000002}}.tar"
        assert _epoch(pattern, tiny_processor, prompt, seed=2) == local  # counts from http://…/manifest.json
        evaluated = sorted(
            k
            for r in range(2)
            for k in _eval_keys(pattern, tiny_processor, prompt, rank=r, world_size=2, num_workers=2)
        )
        assert evaluated == sorted(_eval_keys_all(uneven_shards, tiny_processor, prompt))
    with serve_folder(root, missing={"train/shard-000001.tar"}) as url:
        counter = SkipCounter()
        epoch = _epoch(f"{url}/train/shard-{{000000..000002}}.tar", tiny_processor, prompt, skip_counter=counter)
        assert [len(rank) for rank in epoch] == [5, 5]
        assert counter.as_dict() == {"unreadable_shard": 7}  # its 7 samples, named in the log with the 404
        assert not {key for rank in epoch for keys, _ in rank for key in keys} & set(
            _keys_of(uneven_shards / "shard-000001.tar")
        )


def _keys_of(shard: Path) -> list[str]:
    import tarfile

    with tarfile.open(shard) as tar:
        return sorted({name.split(".")[0] for name in tar.getnames()})


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("samples_per_shard", [3, 7, 20])  # 6, 3 and 1 shards for 4 readers
def test_validation_scores_each_sample_exactly_once_across_2_ranks_and_2_workers(
    tmp_path, tiny_processor, prompt, samples_per_shard
):
    shards = _shard(tmp_path, 17, samples_per_shard=samples_per_shard)
    everything = _eval_keys(shards, tiny_processor, prompt, rank=0, world_size=1, num_workers=0)
    assert len(everything) == 17 == len(set(everything))
    split = [
        key
        for rank in range(2)
        for key in _eval_keys(shards, tiny_processor, prompt, rank=rank, world_size=2, num_workers=2)
    ]
    assert sorted(split) == sorted(everything)


# ----------------------------------------------------------------------------------------------- bad samples


def _corrupt_copy(shards: Path, tmp_path: Path) -> Path:
    """Copy the shards; truncate one mid-member and add a member that is not audio to another."""
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    first = bad / "shard-000000.tar"
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    second = bad / "shard-000001.tar"
    with tarfile.open(second, "a") as tar:
        for name, payload in [("zz_not_audio.flac", b"this is text, not flac"), ("zz_not_audio.txt", b"demat")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            import io

            tar.addfile(info, io.BytesIO(payload))
    return bad


def test_corrupt_members_are_skipped_and_counted_and_training_goes_on(uneven_shards, tmp_path, tiny_processor, prompt):
    bad = _corrupt_copy(uneven_shards, tmp_path)
    counter = SkipCounter()
    keys = _train_keys(bad, tiny_processor, prompt, num_workers=2, skip_counter=counter, epoch_samples=17)
    assert len(keys) == batches_per_epoch(17, 2, 1)  # the epoch still has its full length
    counts = counter.as_dict()  # counted in the worker processes, read here
    assert counts.get("bad_audio", 0) >= 1
    assert counts.get("corrupt_shard", 0) + counts.get("missing_field", 0) >= 1
    assert "zz_not_audio" not in {k for batch in keys for k in batch}


def test_corrupt_members_in_validation_are_counted_not_fatal(uneven_shards, tmp_path, tiny_processor, prompt):
    bad = _corrupt_copy(uneven_shards, tmp_path)
    counter = SkipCounter()
    loader = make_eval_loader(
        bad,
        LoaderOptions(
            tiny_processor.tokenizer, prompt, n_mels=80, micro_batch_size=4, num_workers=0, skip_counter=counter
        ),
    )
    keys = [k for batch in loader for k in batch["keys"]]
    assert 7 < len(keys) < 17
    assert counter.total() >= 2


def test_labels_longer_than_the_decoder_are_skipped_and_counted(tmp_path, tiny_processor, prompt):
    corpus = write_speech_corpus(tmp_path / "corpus", 4)
    (corpus / "spk0" / "utt000.txt").write_text(" ".join(["brezhoneg"] * 600), encoding="utf-8")
    shard_corpus(
        open_corpus(corpus), tmp_path / "out", ShardOptions(val_fraction=0, test_fraction=0, workers=1), progress=False
    )
    counter = SkipCounter()
    loader = make_eval_loader(
        tmp_path / "out" / "train",
        LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=4,
            num_workers=0,
            skip_counter=counter,
            max_label_tokens=448,
        ),
    )
    keys = [k for batch in loader for k in batch["keys"]]
    assert len(keys) == 3
    assert counter.as_dict() == {"too_long_text": 1}


# ------------------------------------------------------------------------------------------------ --pack


def _utterances(tokenizer, prompt, seconds: list[float]) -> list[dict]:
    from wdsbr.text import clean_text

    out = []
    for i, length in enumerate(seconds):
        text = f"{WORDS[i % len(WORDS)].capitalize()} {WORDS[(i * 3) % len(WORDS)]} {i}!"
        cleaned = clean_text(text)
        labels = prompt + tokenizer.encode(cleaned, add_special_tokens=False) + [tokenizer.eos_token_id]
        out.append(
            {
                "key": f"u{i}",
                "audio": np.full(int(length * 16000), 0.01 * (i + 1), np.float32),
                "text": text,
                "cleaned": cleaned,
                "labels": labels,
                "meta": {},
            }
        )
    return out


def test_packing_never_splits_never_overflows_and_keeps_every_utterance_once_in_order(tiny_processor, prompt):
    tokenizer = tiny_processor.tokenizer
    seconds = [3.0, 5.5, 4.0, 12.0, 9.0, 2.5, 29.0, 6.0, 1.0, 7.5, 8.0, 3.3]
    utterances = _utterances(tokenizer, prompt, seconds)
    windows = list(_pack(iter(utterances), tokenizer=tokenizer, prompt_ids=prompt, max_label_tokens=448))
    assert [k for w in windows for k in w["key"].split("+")] == [u["key"] for u in utterances]  # once, in order
    assert sum(w["utterances"] for w in windows) == len(utterances)
    gap = int(PACK_GAP_SECONDS * 16000)
    for w in windows:
        members = [utterances[int(k[1:])] for k in w["key"].split("+")]
        assert len(w["audio"]) <= 30 * 16000
        assert len(w["audio"]) == sum(len(m["audio"]) for m in members) + gap * (len(members) - 1)
        assert w["speech_seconds"] == pytest.approx(sum(len(m["audio"]) for m in members) / 16000)
        # each utterance's samples sit whole in the window, in order, with silence between them
        position = 0
        for m in members:
            assert np.array_equal(w["audio"][position : position + len(m["audio"])], m["audio"])
            position += len(m["audio"]) + gap
        assert w["labels"][: len(prompt)] == prompt and w["labels"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(w["labels"][len(prompt) : -1]) == " ".join(m["cleaned"] for m in members)
        assert len(w["labels"]) - 1 <= 448
    assert max(w["utterances"] for w in windows) >= 3  # short clips did share windows


def test_packing_respects_the_decoder_limit(tiny_processor, prompt):
    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [1.0] * 8)
    limit = max(len(u["labels"]) for u in utterances) - 1  # the longest single utterance just fits, no pair does
    windows = list(_pack(iter(utterances), tokenizer=tokenizer, prompt_ids=prompt, max_label_tokens=limit))
    assert all(len(w["labels"]) - 1 <= limit for w in windows)
    assert [w["utterances"] for w in windows] == [1] * 8


def test_packed_training_stream_is_deterministic_and_counts_utterances(uneven_shards, tiny_processor, prompt):
    def run():
        loader = make_train_loader(
            uneven_shards,
            LoaderOptions(
                tiny_processor.tokenizer,
                prompt,
                n_mels=80,
                micro_batch_size=2,
                num_workers=2,
                shuffle_buffer=8,
                seed=7,
                pack=1.0,
            ),
        )
        return [(b["keys"], b["utterances"], round(b["speech_seconds"], 4)) for b in loader]

    first = run()
    assert first == run()
    assert all(utterances > 2 for _, utterances, _ in first)  # 0.5-1.25 s clips: many per window
    assert len(first) == batches_per_epoch(math.ceil((count_seconds(list_shards(uneven_shards)) + 0.3 * 17) / 27), 2, 1)


LONG_CLIPS = [2.0, 3.5, 5.0, 7.5, 9.0]  # seconds, in turn: 3-6 clips a 30 s window


def _long_shards(root: Path, n: int, speaker: str = "spk", samples_per_shard: int = 13) -> Path:
    """n clips of 2-9 s in shards written by shard_corpus (its manifest lists each clip's seconds)."""
    corpus = root / "corpus"
    for i in range(n):
        folder = corpus / f"{speaker}{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"utt{i:03d}.wav", speech_like(LONG_CLIPS[i % 5], seed=i), 16000)
        (folder / f"utt{i:03d}.txt").write_text(f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]}", encoding="utf-8")
    options = ShardOptions(val_fraction=0.0, test_fraction=0.0, samples_per_shard=samples_per_shard, workers=1)
    shard_corpus(open_corpus(corpus), root / "shards", options, progress=False)
    return root / "shards" / "train"


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory) -> Path:
    """90 clips of 2-9 s (about 500 s) in 7 shards of 13 and one of 12."""
    return _long_shards(tmp_path_factory.mktemp("long"), 90)


def _utterance_keys(shards: Path) -> list[str]:
    manifest = json.loads((shards.parent / "manifest.json").read_text())
    return [key for shard in manifest["splits"]["train"]["shards"] for key, _, _ in shard["clips"]]


def _check_packed(epoch, expected: Counter, world_size: int, num_workers: int, micro_batch_size: int) -> int:
    """The exact-epoch contract for packed windows: the same number of full batches on every rank, every
    utterance in as many windows that are not repeats as `expected` says, the repeats few and named. Returns
    how many windows were repeats."""
    assert len({len(rank) for rank in epoch}) == 1
    assert all(len(keys) == micro_batch_size for rank in epoch for keys, _ in rank)
    shown = Counter(
        utterance
        for rank in epoch
        for keys, repeated in rank
        for window in keys
        if window not in repeated
        for utterance in window.split("+")
    )
    assert shown == expected
    repeats = sum(len(repeated) for rank in epoch for _, repeated in rank)
    assert repeats < world_size * max(1, num_workers) * micro_batch_size
    return repeats


@pytest.mark.parametrize("world_size, num_workers, micro_batch_size", [(2, 2, 2), (3, 1, 3)])
def test_a_packed_epoch_holds_every_utterance_once_and_the_same_batches_on_every_rank(
    long_shards, tiny_processor, prompt, world_size, num_workers, micro_batch_size
):
    epoch = _epoch(
        long_shards,
        tiny_processor,
        prompt,
        world_size=world_size,
        num_workers=num_workers,
        micro_batch_size=micro_batch_size,
        pack=1.0,
    )
    _check_packed(epoch, Counter(_utterance_keys(long_shards)), world_size, num_workers, micro_batch_size)
    windows = sum(len(keys) for rank in epoch for keys, _ in rank)
    assert windows <= 90 / 3  # packed for real: 3 or more clips a window on average


def test_a_resumed_packed_epoch_is_the_rest_of_the_same_epoch(long_shards, tiny_processor, prompt):
    straight = _epoch(long_shards, tiny_processor, prompt, epoch=1, pack=1.0, seed=3)
    resumed = _epoch(long_shards, tiny_processor, prompt, epoch=1, start_batch=2, pack=1.0, seed=3)
    assert [rank[2:] for rank in straight] == resumed


def test_a_packed_epoch_stays_exact_with_speed_perturbation_and_a_pack_fraction(long_shards, tiny_processor, prompt):
    epoch = _epoch(long_shards, tiny_processor, prompt, pack=0.5, speed_perturb="0.9,1.0,1.1")
    _check_packed(epoch, Counter(_utterance_keys(long_shards)), 2, 2, 2)
    sizes = [len(window.split("+")) for rank in epoch for keys, _ in rank for window in keys]
    assert 1 in sizes and max(sizes) >= 3  # single windows beside packed ones


def test_a_bad_clip_in_a_packed_epoch_is_counted_and_every_other_utterance_is_in_one_window(
    long_shards, tiny_processor, prompt, tmp_path
):
    root = tmp_path / "bad"
    shutil.copytree(long_shards.parent, root)
    victim = _utterance_keys(long_shards)[20]  # in the second shard
    path = root / "train" / "shard-000001.tar"
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, payload in members:
            if info.name.startswith(victim + ".") and not info.name.endswith((".txt", ".json")):
                payload = b"not audio at all" * 8
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    counter = SkipCounter()
    epoch = _epoch(root / "train", tiny_processor, prompt, pack=1.0, skip_counter=counter)
    _check_packed(epoch, Counter(_utterance_keys(long_shards)) - Counter([victim]), 2, 2, 2)
    assert counter.as_dict() == {"bad_audio": 1}  # counted once: a top-up that reads it again as a repeat logs it


def test_packed_sources_show_each_utterance_as_often_as_its_factor_says(tmp_path, tiny_processor, prompt):
    sources = [
        Source("a", str(_long_shards(tmp_path / "a", 24, speaker="a", samples_per_shard=7)), 2.0),
        Source("b", str(_long_shards(tmp_path / "b", 30, speaker="b", samples_per_shard=9)), 0.5),
    ]
    epoch = _epoch(sources, tiny_processor, prompt, pack=1.0, seed=7)
    a_keys = _utterance_keys(Path(sources[0].shards))
    shown = Counter(
        u for rank in epoch for keys, repeated in rank for w in keys if w not in repeated for u in w.split("+")
    )
    b_shown = {key: n for key, n in shown.items() if key.startswith("b")}
    assert set(b_shown.values()) == {1} and len(b_shown) == 15  # half of b, each once
    _check_packed(epoch, Counter(a_keys * 2) + Counter(b_shown), 2, 2, 2)


def test_shards_without_per_clip_seconds_pack_about_one_pass_and_say_so(
    long_shards, tiny_processor, prompt, tmp_path, caplog
):
    root = tmp_path / "old"
    shutil.copytree(long_shards.parent, root)
    manifest = json.loads((root / "manifest.json").read_text())
    for shard in manifest["splits"]["train"]["shards"]:
        del shard["clips"]  # as an older shard_corpus wrote it
    (root / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="wdsbr.data"):
        epoch = _epoch(root / "train", tiny_processor, prompt, pack=1.0, seed=11)
    assert "a packed epoch is about one pass, not an exact one" in caplog.text
    assert len({len(rank) for rank in epoch}) == 1  # still the same batches on every rank


def test_a_pack_fraction_leaves_the_other_windows_single(tiny_processor, prompt):
    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [2.0] * 60)
    windows = list(_pack(iter(utterances), tokenizer=tokenizer, prompt_ids=prompt, max_label_tokens=448, fraction=0.5))
    assert [k for w in windows for k in w["key"].split("+")] == [u["key"] for u in utterances]
    singles, packed = sum(w["utterances"] == 1 for w in windows), sum(w["utterances"] > 1 for w in windows)
    assert singles >= 3 and packed >= 3  # both kinds, decided per window by its first key: deterministic
    again = _pack(iter(utterances), tokenizer=tokenizer, prompt_ids=prompt, max_label_tokens=448, fraction=0.5)
    assert [(w["key"], w["labels"]) for w in windows] == [(w["key"], w["labels"]) for w in again]


# ------------------------------------------------------------------------------------------- --timestamps


def _stamps(tokenizer, labels: list[int]) -> list[float]:
    from wdsbr.timestamps import TIME_PRECISION, timestamp_begin

    begin = timestamp_begin(tokenizer)
    return [round((t - begin) * TIME_PRECISION, 2) for t in labels if t >= begin]


def test_timestamps_label_packed_utterances_where_the_packer_put_them(tiny_processor, prompt):
    from wdsbr.data import _timestamp

    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [2.0, 1.5, 3.0])
    [window] = _pack(iter(utterances), tokenizer=tokenizer, prompt_ids=prompt, max_label_tokens=448)
    [timed] = _timestamp(iter([window]), tokenizer, prompt, 448, fraction=1.0, seed=0, epoch=0)
    assert timed["timestamps"] and tokenizer.convert_tokens_to_ids("<|notimestamps|>") not in timed["labels"]
    assert _stamps(tokenizer, timed["labels"]) == [0.0, 2.0, 2.3, 3.8, 4.1, 7.1]  # 0.3 s gaps between utterances
    assert len(window["audio"]) / 16000 == pytest.approx(7.1)


def test_timestamps_on_a_share_of_windows_drawn_per_seed_and_epoch(tiny_processor, prompt):
    from wdsbr.data import _timestamp

    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [1.0] * 200)

    def timed(epoch):
        return [s["timestamps"] for s in _timestamp(iter(utterances), tokenizer, prompt, 448, 0.2, seed=3, epoch=epoch)]

    first = timed(0)
    assert first == timed(0) and first != timed(1)
    assert 0.1 < sum(first) / len(first) < 0.3
    single = next(
        s for s in _timestamp(iter(utterances), tokenizer, prompt, 448, 0.2, seed=3, epoch=0) if s["timestamps"]
    )
    assert _stamps(tokenizer, single["labels"]) == [0.0, 1.0]  # a single clip: from its start to its end
    plain = next(
        s for s in _timestamp(iter(utterances), tokenizer, prompt, 448, 0.2, seed=3, epoch=0) if not s["timestamps"]
    )
    assert plain["labels"] == utterances[int(plain["key"][1:])]["labels"]


def test_timestamps_that_do_not_fit_the_decoder_keep_the_plain_labels(tiny_processor, prompt):
    from wdsbr.data import _timestamp

    tokenizer = tiny_processor.tokenizer
    [utterance] = _utterances(tokenizer, prompt, [1.0])
    limit = (
        len(utterance["labels"]) - 1
    )  # the plain labels just fit; two timestamp tokens more do not (one prompt token less)
    [out] = _timestamp(iter([utterance]), tokenizer, prompt, limit, fraction=1.0, seed=0, epoch=0)
    assert not out["timestamps"] and out["labels"] == utterance["labels"]


def test_training_stream_with_timestamps_trains_on_them(uneven_shards, tiny_processor, prompt):
    loader = make_train_loader(
        uneven_shards,
        LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=2,
            num_workers=0,
            shuffle_buffer=8,
            seed=7,
            pack=1.0,
            timestamps=1.0,
        ),
    )
    from wdsbr.timestamps import timestamp_begin

    begin = timestamp_begin(tiny_processor.tokenizer)
    for batch in loader:
        for row in batch["labels"].tolist():
            stamps = [t for t in row if t >= begin]
            assert len(stamps) >= 2 and stamps == sorted(stamps)


def test_a_recordings_window_keeps_its_segments_packed_and_bad_ones_are_counted(tiny_processor, prompt):
    from wdsbr.data import _timestamp, _tokenize
    from wdsbr.text import clean_text

    tokenizer = tiny_processor.tokenizer
    window, clip = _utterances(tokenizer, prompt, [4.0, 1.0])
    window["meta"] = {"segments": [[0.5, 1.5, "Demat!"], [2.0, 3.9, "Kenavo."]], "previous_text": "Ha c'hwi?"}
    broken = {**clip, "key": "broken", "meta": {"segments": [[2.0, 3.0, "a"], [1.0, 1.5, "b"]]}}  # out of order
    counter = SkipCounter()
    kept = list(_tokenize(iter([window, broken, clip]), counter, tokenizer, prompt, clean_text, 448))
    assert [s["key"] for s in kept] == ["u0", "u1"] and counter.as_dict() == {"bad_segments": 1}
    assert kept[0]["segments"] == [(0.5, 1.5, "demat"), (2.0, 3.9, "kenavo")] and kept[0]["previous"] == "ha c'hwi"
    [packed] = _pack(iter(kept), tokenizer=tokenizer, prompt_ids=prompt, max_label_tokens=448)
    [timed] = _timestamp(iter([packed]), tokenizer, prompt, 448, fraction=1.0, seed=0, epoch=0)
    assert _stamps(tokenizer, timed["labels"]) == [0.5, 1.5, 2.0, 3.9, 4.3, 5.3]  # the clip after 4 s + 0.3 s of gap


# ------------------------------------------------------------------------------------------- --prev-text


def test_previous_text_prompts_windows_with_the_text_before_them_out_of_the_loss(tiny_processor, prompt):
    from wdsbr.data import _previous_text

    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [1.0] * 4)
    utterances[2]["previous"] = "their own recording's line"  # KEY.json's previous_text: preferred to the stream's
    out = list(_previous_text(iter(utterances), tokenizer, 448, fraction=1.0, seed=0, epoch=0))
    assert "decoder_input_ids" not in out[0] and out[0]["labels"] == utterances[0]["labels"]  # nothing before it
    start_of_prev = tokenizer.convert_tokens_to_ids("<|startofprev|>")
    for sample, source, previous in zip(
        out[1:], utterances[1:], [utterances[0]["cleaned"], "their own recording's line", utterances[2]["cleaned"]]
    ):
        prev_ids = tokenizer.encode(" " + previous, add_special_tokens=False)
        assert sample["decoder_input_ids"] == [start_of_prev, *prev_ids, *source["labels"][:-1]]
        assert sample["labels"] == [-100] * (len(prev_ids) + 1) + source["labels"][1:]  # learnt as without it


def test_previous_text_on_a_share_of_windows_drawn_per_seed_and_epoch(tiny_processor, prompt):
    from wdsbr.data import _previous_text

    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [1.0] * 200)

    def prompted(epoch):
        return [
            "decoder_input_ids" in s for s in _previous_text(iter(utterances), tokenizer, 448, 0.2, seed=3, epoch=epoch)
        ]

    first = prompted(0)
    assert first == prompted(0) and first != prompted(1)
    assert 0.1 < sum(first) / len(first) < 0.3


def test_a_batch_with_prompts_gives_every_other_sample_the_inputs_the_model_would_shift(tiny_processor, prompt):
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    from wdsbr.collate import Collator
    from wdsbr.data import _previous_text

    tokenizer = tiny_processor.tokenizer
    utterances = _utterances(tokenizer, prompt, [1.0, 1.0, 1.0])
    plain, prompted = utterances[0], list(_previous_text(iter(utterances[:2]), tokenizer, 448, 1.0, 0, 0))[1]
    batch = Collator(80, prompt[0])([plain, prompted])
    assert batch["decoder_input_ids"].shape == batch["labels"].shape
    assert batch["decoder_input_ids"][1].tolist()[: len(prompted["decoder_input_ids"])] == prompted["decoder_input_ids"]
    alone = Collator(80, prompt[0])([plain])  # no prompt in the batch: the model shifts the labels itself
    assert "decoder_input_ids" not in alone
    shifted = shift_tokens_right(alone["labels"], tokenizer.eos_token_id, prompt[0])[0]
    assert batch["decoder_input_ids"][0, : len(shifted)].tolist() == shifted.tolist()


def test_training_stream_with_previous_text_brings_decoder_inputs(uneven_shards, tiny_processor, prompt):
    loader = make_train_loader(
        uneven_shards,
        LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=2,
            num_workers=0,
            shuffle_buffer=8,
            seed=7,
            timestamps=0.5,
            prev_text=1.0,
        ),
    )
    start_of_prev = tiny_processor.tokenizer.convert_tokens_to_ids("<|startofprev|>")
    rows = [row for batch in loader for row in batch["decoder_input_ids"].tolist()]
    assert sum(row[0] == start_of_prev for row in rows) >= len(rows) - 1  # all but the reader's first window


def test_a_resumed_epoch_prompts_and_times_its_windows_as_the_uninterrupted_one(uneven_shards, tiny_processor, prompt):
    def batches(start_batch=0):
        options = LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=2,
            num_workers=2,
            shuffle_buffer=8,
            seed=5,
            timestamps=0.5,
            prev_text=0.5,
        )
        loader = make_train_loader(uneven_shards, options, start_batch=start_batch)
        return [
            (
                batch["keys"],
                batch["labels"].tolist(),
                batch["decoder_input_ids"].tolist() if "decoder_input_ids" in batch else None,
            )
            for batch in loader
        ]

    full = batches()
    assert sum(inputs is not None for _, _, inputs in full) >= 2  # prompted windows are in it
    assert batches(start_batch=3) == full[3:]  # the stream before the skip is replayed: same previous texts


_KILLED_TRAINER = """
import sys
import psutil
from transformers import WhisperProcessor
from wdsbr.data import LoaderOptions, make_train_loader

tokenizer = WhisperProcessor.from_pretrained(sys.argv[2]).tokenizer
loader = make_train_loader(sys.argv[1], LoaderOptions(tokenizer, list(tokenizer.prefix_tokens), n_mels=80,
                                                      micro_batch_size=2, num_workers=1))
batches = iter(loader)  # held: its worker lives as long as it does
next(batches)
print(" ".join(str(child.pid) for child in psutil.Process().children(recursive=True)), flush=True)
sys.stdin.read()  # until killed
"""


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_their_forkserver_and_resource_tracker_exit_when_the_trainer_is_killed(uneven_shards, tiny_whisper):
    """SIGKILL runs no clean-up in the trainer: its DataLoader worker must notice by itself. It used to live on for
    ever (torch's watchdog follows the worker's parent, the forkserver), keeping the forkserver and the resource
    tracker alive through inherited pipes, and a job's log open (srun waited a minute for it)."""
    trainer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TRAINER, str(uneven_shards), tiny_whisper],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        helpers = [int(pid) for pid in trainer.stdout.readline().split()]
    finally:
        trainer.kill()
        trainer.wait()
    assert len(helpers) >= 2, helpers  # the worker and the forkserver at least (and the resource tracker)
    deadline = time.monotonic() + 60  # a bound against hanging: it takes well under a second with a pidfd
    while any(map(_running, helpers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in helpers if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after their trainer was killed: {left}"


# ------------------------------------------------------------------------------------ several named sources
SOURCE_SIZES = {"a": [5, 3], "b": [7, 2, 4], "c": [6, 5]}  # 8, 13 and 11 samples
FACTORS = {"a": 2.0, "b": 1.0, "c": 0.5}


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory) -> list[Source]:
    root = tmp_path_factory.mktemp("sources")
    for name, sizes in SOURCE_SIZES.items():
        write_plain_shards(root / name, sizes, seconds=0.3, prefix=f"{name}-")
    return [Source(name, str(root / name), FACTORS[name]) for name in SOURCE_SIZES]


def _source_of(key: str) -> str:
    return key.split("-")[0]


def _sources_epoch(sources, tiny_processor, prompt, epoch: int, start_batch: int = 0) -> list[list[dict]]:
    """[rank][batch] of one epoch at 2 ranks × 2 workers, micro-batch 3."""
    ranks = []
    for rank in range(2):
        options = LoaderOptions(
            tiny_processor.tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=3,
            num_workers=2,
            rank=rank,
            world_size=2,
            shuffle_buffer=4,
            seed=7,
        )
        loader = make_train_loader(sources, options, epoch=epoch, start_batch=start_batch)
        ranks.append([{"keys": b["keys"], "repeated": b["repeated"], "sources": b["sources"]} for b in loader])
    return ranks


def test_several_sources_show_each_sample_as_often_as_its_factor_says_epoch_after_epoch(
    three_sources, tiny_processor, prompt
):
    """Factors 2, 1 and 0.5 at 2 ranks × 2 workers: per epoch a sample is shown ⌊f⌋ or ⌈f⌉ times, over k
    epochs ⌊k·f⌋ or ⌈k·f⌉ times (the half of c rotates); equal full batches on every rank; the fill is bounded
    and named; each batch counts its samples by source."""
    everything = {
        f"{name}-s{shard}_{i:03d}"
        for name, sizes in SOURCE_SIZES.items()
        for shard, size in enumerate(sizes)
        for i in range(size)
    }
    so_far = Counter()
    for epoch in range(3):
        ranks = _sources_epoch(three_sources, tiny_processor, prompt, epoch)
        window = math.floor((epoch + 1) * 0.5 * 11) - math.floor(epoch * 0.5 * 11)
        planned = 2 * 8 + 13 + window
        assert [len(rank) for rank in ranks] == [batches_per_epoch(planned, 3, 2)] * 2
        assert all(len(batch["keys"]) == 3 for rank in ranks for batch in rank)
        shown = Counter(key for rank in ranks for batch in rank for key in batch["keys"])
        fill = Counter(key for rank in ranks for batch in rank for key in batch["repeated"])
        assert sum(fill.values()) == 2 * len(ranks[0]) * 3 - planned <= 2 * 3 - 1
        shown -= fill
        assert set(shown) <= everything
        assert {key: shown[key] for key in everything if key.startswith("a-")} == {
            key: 2 for key in everything if key.startswith("a-")
        }
        assert all(shown[key] == 1 for key in everything if key.startswith("b-"))
        c_keys = [key for key in everything if key.startswith("c-")]
        assert all(shown[key] in (0, 1) for key in c_keys) and sum(shown[key] for key in c_keys) == window
        counted = Counter()
        for rank in ranks:
            for batch in rank:
                counted.update(batch["sources"])
        assert counted == Counter(_source_of(key) for rank in ranks for batch in rank for key in batch["keys"])
        so_far += shown
        k = epoch + 1
        assert all(so_far[key] in (math.floor(k * 0.5), math.ceil(k * 0.5)) for key in c_keys)
        assert sum(so_far[key] for key in c_keys) == math.floor(k * 0.5 * 11)
        assert all(so_far[key] == 2 * k for key in everything if key.startswith("a-"))


def test_several_sources_resume_mid_epoch_exactly(three_sources, tiny_processor, prompt):
    full = _sources_epoch(three_sources, tiny_processor, prompt, epoch=1)
    resumed = _sources_epoch(three_sources, tiny_processor, prompt, epoch=1, start_batch=2)
    assert [rank[2:] for rank in full] == resumed


def test_the_sources_are_dealt_in_proportion_within_an_epoch(three_sources):
    """Not all of a then all of b: cut into pieces of at most `piece` samples, each source's segments are dealt so
    that at every point of the epoch's sequence each source has given its share of the samples so far (± 2
    pieces); the cut changes which samples the epoch holds not at all."""
    counts = [[5, 3], [7, 2, 4], [6, 5]]
    source_of = [0, 0, 1, 1, 1, 2, 2]
    for epoch in range(3):
        whole = _epoch_segments(counts, [2.0, 1.0, 0.5], seed=7, epoch=epoch)
        cut = _epoch_segments(counts, [2.0, 1.0, 0.5], seed=7, epoch=epoch, piece=2)
        samples = lambda segments: Counter((s, i) for s, first, last in segments for i in range(first, last))  # noqa: E731
        assert samples(cut) == samples(whole)
        assert all(last - first <= 2 for _, first, last in cut)
        totals = Counter()
        for shard, first, last in cut:
            totals[source_of[shard]] += last - first
        everything, done = sum(totals.values()), Counter()
        for shard, first, last in cut:
            done[source_of[shard]] += last - first
            so_far = sum(done.values())
            assert all(abs(done[s] - so_far * totals[s] / everything) <= 2 * 2 for s in totals), (epoch, cut)
    plain = _epoch_segments([[4, 4, 4]], [1.0], seed=3, epoch=0)
    assert sorted(plain) == [(0, 0, 4), (1, 0, 4), (2, 0, 4)]  # one source at factor 1: each shard once


def test_a_reader_takes_its_sources_side_by_side_in_proportion():
    """Within a reader's range the sources are read at once, sample by sample in proportion to what the range
    holds of each; a stream that ends early (bad samples) leaves the rotation, the others go on."""
    order = [sample["s"] for sample in _interleave([(iter([{"s": "a"}] * 6), 6), (iter([{"s": "b"}] * 2), 2)])]
    assert order == ["a", "a", "b", "a", "a", "a", "b", "a"]
    short = [sample["s"] for sample in _interleave([(iter([{"s": "a"}] * 2), 4), (iter([{"s": "b"}] * 4), 4)])]
    assert short == ["a", "b", "a", "b", "b", "b"]
    one = [{"k": i} for i in range(3)]
    assert list(_interleave([(iter(one), 3)])) == one


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cv=shards/cv/train", Source("cv", "shards/cv/train", 1.0)),
        ("opab=https://host/opab/shard-{0..9}.tar@0.5", Source("opab", "https://host/opab/shard-{0..9}.tar", 0.5)),
        ("shards/train", Source("train", "shards/train", 1.0)),
        ("shards/train@3", Source("train", "shards/train", 3.0)),
        ("https://user@host/train/shard-000000.tar", Source("train", "https://user@host/train/shard-000000.tar", 1.0)),
        ("http://host/x.tar?token=abc", Source("train", "http://host/x.tar?token=abc", 1.0)),
    ],
)
def test_a_source_is_name_spec_and_factor(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize("text, message", [("cv=shards@0", "must be above 0"), ("cv=", "no shards after cv=")])
def test_a_bad_source_is_one_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_source(text)

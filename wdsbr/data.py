"""Streaming loaders: WebDataset shards -> batches of log-mel features and labels, on every rank and worker.

Two streams, one pipeline shape (read tar -> [shuffle] -> decode -> tokenize -> batch -> features):

* Training (`make_train_loader`): every rank runs the same number of batches per epoch, `ceil(N / (world_size
  × micro_batch_size))`, and every one of the N samples is in exactly one batch of it, for any shard sizes,
  shard count (fewer than readers too) and number of DataLoader workers. Per epoch the shards are concatenated
  in a seeded order; the sequence is cut into one contiguous range per reader (`rank × worker`, a "slot"), as
  long as that reader's batches need. The ranges add up to `world_size × batches × micro_batch`, so the last
  one wraps around to the sequence's start: at most `world_size × micro_batch − 1` repeats, marked. A reader
  whose range starts mid-shard seeks over that shard's first members (local tars) or reads through them
  (streams); one that skipped bad samples tops up from the positions after its range (marked when they are
  another reader's). The stream is a pure function of (seed, epoch, rank, worker), so a run resumed at batch
  b of an epoch skips exactly what it had consumed (before the features are computed) and sees the same
  batches after it as an uninterrupted run would.
* Validation (`make_eval_loader`) is one exact pass: every sample is read by exactly one slot, a contiguous
  range of equal length (± 1) when the shards' counts are known, whole shards (or every n-th sample) otherwise.
  Ranks may get different batch counts: evaluation gathers results after its loop, no collective inside it.

A bad sample (unreadable or truncated shard, missing field, undecodable audio, too long) is skipped and counted in a
`SkipCounter`, shared by the DataLoader's worker processes, that the trainer reads and logs.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import re
import select
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds

from wdsbr.audio import SAMPLE_RATE, WINDOW_SECONDS, AudioError, load_audio
from wdsbr.augment import SpecAugment, draw_speed, parse_speeds, rng_for, speed_perturb, stable_seed
from wdsbr.collate import Collator
from wdsbr.streams import (
    count_samples,
    count_seconds,
    list_shards,
    manifest_value,
    read_shard_range,
    shard_counts,
)
from wdsbr.text import clean_text
from wdsbr.timestamps import check_segments, timed_labels, with_previous_text

log = logging.getLogger(__name__)

MAX_SECONDS = WINDOW_SECONDS  # longer audio would be truncated away from its transcript
PACK_GAP_SECONDS = 0.3  # silence between packed utterances (--pack)
PACK_FILL = 0.9  # a greedy pack of short clips fills about this much of the window: sizes a packed epoch
AUDIO_FIELDS = ("flac", "wav", "mp3", "ogg")
SKIP_REASONS = (
    "unreadable_shard",
    "corrupt_shard",
    "short_shard",
    "missing_field",
    "bad_audio",
    "too_long_audio",
    "empty_text",
    "too_long_text",
    "bad_segments",
    "pack_split",
)


class SkipCounter:
    """Counts of skipped samples by reason, shared between the main process and its DataLoader workers."""

    def __init__(self) -> None:
        self._counts = _worker_context().Array("q", len(SKIP_REASONS))  # the context the workers come from

    def add(self, reason: str, detail: str = "", samples: int = 1) -> None:
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += samples
        log.warning("skipped %s (%s) %s", "sample" if samples == 1 else f"{samples} samples", reason, detail)

    def as_dict(self) -> dict[str, int]:
        with self._counts.get_lock():
            return {reason: int(n) for reason, n in zip(SKIP_REASONS, self._counts) if n}

    def total(self) -> int:
        return sum(self.as_dict().values())


# ---------------------------------------------------------------------------------------------- readers


def _reader_slot(rank: int, world_size: int, rotation: int = 0) -> tuple[int, int, int]:
    """(slot, n_slots, logical worker) of the calling DataLoader worker. `rotation` renumbers workers so that
    after a resume at batch b the first worker asked for a batch is the one that owns batch b."""
    info = torch.utils.data.get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    logical = (worker + rotation) % workers
    return rank * workers + logical, world_size * workers, logical


@dataclass(frozen=True)
class Source:
    """One named training corpus: its shards (a folder, brace pattern, URL or list) and how often an epoch shows it:
    each of its samples ⌊factor⌋ or ⌈factor⌉ times, and over k epochs ⌊k·factor⌋ or ⌈k·factor⌉ times."""

    name: str
    shards: str | list[str]
    factor: float = 1.0


def parse_source(text: str, default_name: str = "train") -> Source:
    """`NAME=SPEC@FACTOR` (--train-shards): `NAME=` and `@FACTOR` are optional (a plain SPEC is `default_name` at
    factor 1). A NAME is letters, digits, `_`, `.` or `-`; a FACTOR a number > 0, so URLs keep their `=` and `@`."""
    name, spec, factor = default_name, text, 1.0
    head, equals, rest = text.partition("=")
    if equals and re.fullmatch(r"[A-Za-z0-9_.-]+", head):
        name, spec = head, rest
    body, at, tail = spec.rpartition("@")
    if at and re.fullmatch(r"\d+(\.\d*)?|\.\d+", tail):
        spec, factor = body, float(tail)
        if factor <= 0:
            raise ValueError(f"{text}: the factor after @ must be above 0 (leave the source out instead)")
    if not spec:
        raise ValueError(f"{text}: no shards after {name}= (give NAME=SPEC@FACTOR)")
    return Source(name, spec, factor)


def parse_sources(texts: Sequence[str], option: str, default_name: str, factors: bool = True) -> list[Source]:
    """Every `NAME=SPEC[@FACTOR]` of a repeated option (`--train-shards`, `--val-shards`), checked: names unique,
    factors only where they mean something (`factors`)."""
    sources = [parse_source(text, default_name) for text in texts]
    names = [source.name for source in sources]
    if len(set(names)) < len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"{option}: the name {', '.join(twice)} is given twice: name each source (NAME=SPEC)")
    if not factors and any(source.factor != 1 for source in sources):
        raise ValueError(f"{option}: a validation set has no @FACTOR (every sample is scored once)")
    return sources


def _epoch_segments(
    counts: Sequence[Sequence[int]], factors: Sequence[float], seed: int, epoch: int, piece: int | None = None
) -> list[tuple[int, int, int]]:
    """The epoch's sequence as (shard, first, stop) segments, shard numbered across the sources in order: each
    source's shards ⌊factor⌋ times whole, then a window of fraction × its N samples that moves on by that much
    every epoch (so over k epochs each sample is shown ⌊k·factor⌋ or ⌈k·factor⌉ times). One source: its segments
    in a seeded order (at factor 1 each shard once, in the order of earlier versions). Several: each source's
    segments in a seeded order, cut into pieces of at most `piece` samples, and the sources' pieces dealt in
    proportion (`_deal`), so that every stretch of the sequence holds each source in its share of the epoch."""
    rng = random.Random(stable_seed(seed, epoch, "shards"))
    by_source, base = [], 0
    for source_counts, factor in zip(counts, factors):
        whole, fraction = int(factor), factor - int(factor)
        shards = [(base + i, 0, count) for i, count in enumerate(source_counts)]
        segments = shards * whole
        total = sum(source_counts)
        if fraction and total:
            start, stop = math.floor(epoch * fraction * total), math.floor((epoch + 1) * fraction * total)
            segments += [(shard, first, last) for shard, first, last, _ in _pieces(shards, start, stop)]
        by_source.append(segments)
        base += len(source_counts)
    if len(by_source) == 1:
        rng.shuffle(by_source[0])
        return by_source[0]
    for segments in by_source:
        rng.shuffle(segments)
    return _deal([_cut(segments, piece) for segments in by_source])


def _cut(segments: Sequence[tuple[int, int, int]], piece: int | None) -> list[tuple[int, int, int]]:
    """The segments, each cut into consecutive pieces of at most `piece` samples (None: left whole)."""
    if not piece:
        return list(segments)
    return [(shard, at, min(at + piece, last)) for shard, first, last in segments for at in range(first, last, piece)]


def _deal(by_source: Sequence[Sequence[tuple[int, int, int]]]) -> list[tuple[int, int, int]]:
    """Merge each source's (shard, first, stop) segments, keeping each source's order, so that at every point each
    source has given about the same fraction of its samples: a segment is placed by the middle of its span within
    its source (stride scheduling; ties go to the earlier source)."""
    keyed = []
    for index, segments in enumerate(by_source):
        total = sum(last - first for _, first, last in segments) or 1
        done = 0
        for segment in segments:
            size = segment[2] - segment[1]
            keyed.append(((done + size / 2) / total, index, segment))
            done += size
    return [segment for _, _, segment in sorted(keyed, key=lambda item: item[:2])]


def _pieces(segments: Sequence[tuple[int, int, int]], start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
    """(shard, first, stop within that shard, position) covering positions start..stop-1 of the sequence that
    concatenates the (shard, first, stop) segments, repeated end to end (position p is sample p mod N)."""
    bounds = list(itertools.accumulate((last - first for _, first, last in segments), initial=0))
    total = bounds[-1]
    position = start
    while position < stop:
        offset = position % total
        index = bisect.bisect_right(bounds, offset) - 1  # the segment holding `offset` (empty ones are passed over)
        shard, first, last = segments[index]
        begin = first + offset - bounds[index]
        take = min(last - begin, stop - position)
        yield shard, begin, begin + take, position
        position += take


def reader_lengths(
    batches_per_rank: int, world_size: int, num_workers: int, micro_batch_size: int, samples: int | None = None
) -> list[int]:
    """Samples each reader (slot = rank × workers + worker) reads from the epoch's sequence: its batch quota ×
    micro-batch, so ranges add up to world_size × batches × micro-batch (the last few wrap around to the start:
    the epoch's repeats). With `samples` (packing: quotas are windows of unknown size), the N utterances are
    shared in proportion to the quotas instead, without repeats."""
    workers = max(1, num_workers)
    quotas = [
        _worker_quota(batches_per_rank, workers, logical) for _ in range(world_size) for logical in range(workers)
    ]
    if samples is None:
        return [quota * micro_batch_size for quota in quotas]
    ends = [samples * done // sum(quotas) for done in itertools.accumulate(quotas)]
    return [end - start for start, end in zip([0] + ends, ends)]


def _planned_train_samples(
    shards: list[str],
    names: list[str],
    segments: list[tuple[int, int, int]],
    lengths: list[int],
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    rotation: int,
    bufsize: int,
    on_problem,
    holes: bool = False,
) -> Iterator[dict]:
    """This reader's raw samples for an epoch, each tagged with its source's name (`names[shard]`) and its position
    in the epoch's sequence (`__position__`): its contiguous
    range of the epoch's sequence (the `segments` of `_epoch_segments`: each sample as often as its source's factor
    says; positions past N wrap around and are marked `__repeat__`), through a
    shuffle buffer flushed at the range's end; then, only if skipped samples left the reader short of its
    batches, the positions after its range, marked `__repeat__` where another reader's range holds them. With
    `holes` (packed epochs, whose plan follows this shuffle's order: `PackPlan`), samples lost from the range keep
    their places in the shuffle buffer, so the others come out in the planned order."""
    slot, _, _ = _reader_slot(rank, world_size, rotation)
    total, cycle = sum(lengths), sum(last - first for _, first, last in segments)
    start = sum(lengths[:slot])
    end = start + lengths[slot]

    def said(reason: str, samples: int, detail: str) -> None:  # a repeat's losses are its first reader's to count
        log.info("repeat: %s (%s)", detail, reason)

    def read_pieces(pieces: list[tuple[int, int, int, int]], overflow: bool) -> Iterator[dict]:
        for shard, first, stop, position in pieces:
            repeat = position >= cycle or (overflow and position < total)
            got = 0
            for sample in read_shard_range(shards[shard], first, stop, said if overflow or repeat else on_problem):
                yield {**sample, "__repeat__": repeat, "__source__": names[shard], "__position__": position + got}
                got += 1
            if holes and not overflow:  # samples lost at a piece's end: keep their places in the shuffle's order
                yield from ({"__hole__": True} for _ in range(stop - first - got))

    def read(first_position: int, last_position: int, overflow: bool) -> Iterator[dict]:
        streams = [
            (read_pieces(pieces, overflow), sum(p[2] - p[1] for p in pieces))
            for pieces in _pieces_by_source(segments, names, first_position, last_position)
        ]
        yield from _interleave(streams)

    rng = random.Random(stable_seed(seed, epoch, slot))
    shuffled = wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(read(start, end, overflow=False))
    yield from (sample for sample in shuffled if "__hole__" not in sample)
    for position in itertools.count(end, cycle):  # a top-up; ends when the batches are taken (the stage below)
        got = 0
        for sample in read(position, position + cycle, overflow=True):
            got += 1
            yield sample
        if not got:
            raise RuntimeError(f"training shards yield no readable samples (tried all {len(shards)}, from {shards[0]})")


def _pieces_by_source(
    segments: Sequence[tuple[int, int, int]], names: Sequence[str], start: int, stop: int
) -> list[list[tuple[int, int, int, int]]]:
    """The pieces (`_pieces`) of positions start..stop-1, grouped by source name in order of first appearance: a
    reader reads each group as one stream and interleaves them (`_interleave`)."""
    by_source: dict[str, list] = {}
    for piece in _pieces(segments, start, stop):
        by_source.setdefault(names[piece[0]], []).append(piece)
    return list(by_source.values())


def _interleave(streams: list[tuple[Iterator[dict], int]]) -> Iterator[dict]:
    """Samples of several (stream, planned length) pairs, one at a time from the stream that has given the smallest
    share of its length so far (ties to the earlier): each source's samples spread evenly over the reader's range,
    not in blocks. A stream that ends early (bad samples) just leaves the rotation."""
    if len(streams) == 1:
        yield from streams[0][0]
        return
    given = [0] * len(streams)
    live = [index for index, (_, planned) in enumerate(streams) if planned > 0]
    while live:
        index = min(live, key=lambda i: ((given[i] + 0.5) / streams[i][1], i))
        sample = next(streams[index][0], None)
        if sample is None:
            live.remove(index)
            continue
        given[index] += 1
        yield sample


# ----------------------------------------------------------------------------------------- packed epochs

PACK_PLAN_MARGIN_SECONDS = 0.05  # a plan fills a window to 30 s less this: manifest seconds are rounded to 1 ms


@dataclass(frozen=True)
class PackPlan:
    """An exact packed epoch, planned before it is read: `lengths`, each reader's range of the epoch's sequence
    (for `_planned_train_samples`), `window` (the window of each position of the sequence, numbered in the order
    the readers emit them) and `sizes` (the utterances of each window)."""

    lengths: list[int]
    window: list[int]
    sizes: list[int]
    batches_per_rank: int


def _clip_table(shards: Sequence[str], counts: Sequence[int]) -> list[list] | None:
    """Each shard's [key, seconds, transcript bytes] per sample from its manifest row (`clips`); None when a shard
    has none or it disagrees with the shard's count."""
    table = []
    for shard, count in zip(shards, counts):
        clips = manifest_value(shard, "clips")
        if not isinstance(clips, list) or len(clips) != count:
            return None
        table.append(clips)
    return table


def _reader_order(
    segments: Sequence[tuple[int, int, int]],
    names: Sequence[str],
    start: int,
    stop: int,
    seed: int,
    epoch: int,
    slot: int,
    bufsize: int,
) -> Iterator[int]:
    """The positions start..stop-1 in the order the reader `slot` yields their samples: its sources interleaved,
    then its shuffle buffer, with the same rng (`_planned_train_samples`, holes kept)."""
    streams = [
        (
            iter([position + i for _, first, last, position in pieces for i in range(last - first)]),
            sum(last - first for _, first, last, _ in pieces),
        )
        for pieces in _pieces_by_source(segments, names, start, stop)
    ]
    rng = random.Random(stable_seed(seed, epoch, slot))
    return wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(_interleave(streams))


def _plan_windows(
    positions: Iterable[int],
    seconds: Sequence[float],
    sizes: Sequence[int],
    alone: Sequence[bool],
    *,
    prompt_tokens: int,
    max_label_tokens: int,
    max_seconds: float = MAX_SECONDS,
    gap_seconds: float = PACK_GAP_SECONDS,
) -> Iterator[list[int]]:
    """`_pack`'s windows over positions, from each position's `seconds` (at its --speed-perturb speed) and
    transcript bytes (`sizes`), which bound its tokens (a byte-level BPE token holds at least one byte): greedy, in
    order, a window closed when the next utterance would pass 30 s (less a margin) or the decoder's limit, or after
    an utterance that stays `alone` (--pack-fraction)."""
    limit = max_seconds - PACK_PLAN_MARGIN_SECONDS
    group: list[int] = []
    length = tokens = 0.0
    for position in positions:
        more, size = seconds[position], sizes[position]
        if (
            group
            and not alone[group[0]]
            and length + gap_seconds + more <= limit
            and tokens + 1 + size <= max_label_tokens
        ):
            group.append(position)
            length, tokens = length + gap_seconds + more, tokens + 1 + size
            continue
        if group:
            yield group
        group, length, tokens = [position], more, prompt_tokens + size  # labels less the start token, + eos
    if group:
        yield group


def _pack_plan(
    segments: Sequence[tuple[int, int, int]],
    names: Sequence[str],
    clips: Sequence[Sequence],
    options: LoaderOptions,
    epoch: int,
    speeds: tuple[float, ...] | None,
) -> PackPlan:
    """The epoch's readers' ranges and windows, so that every reader emits exactly its batch quota of windows
    (topping up with marked repeats only where its range falls short) and every utterance of the sequence is in
    exactly one window: starting just under the batches the whole sequence packed as one range would make, each
    reader in turn takes the longest range whose planned windows fit its quota; while the readers leave positions
    over, every rank gets one more batch."""
    o = options
    seconds, sizes, alone = [], [], []
    for shard, first, last in segments:  # each position's clip, as the reader will decode and pack it
        for key, length, size in clips[shard][first:last]:
            length = float(length)
            if speeds:  # the speed _decode draws for (seed, epoch, key)
                length /= draw_speed(length * SAMPLE_RATE, key, speeds, o.seed, epoch, MAX_SECONDS * SAMPLE_RATE)
            seconds.append(length)
            sizes.append(int(size))
            alone.append(o.pack < 1.0 and stable_seed(key) / 2**64 >= o.pack)
    total = len(seconds)
    windows_of = functools.partial(
        _plan_windows,
        seconds=seconds,
        sizes=sizes,
        alone=alone,
        prompt_tokens=len(o.prompt_ids),
        max_label_tokens=o.max_label_tokens,
    )

    def planned(slot: int, start: int, stop: int) -> list[list[int]]:
        order = _reader_order(segments, names, start, stop, o.seed, epoch, slot, o.shuffle_buffer)
        return list(windows_of(order))

    workers = max(1, o.num_workers)
    everything = sum(
        1 for _ in windows_of(_reader_order(segments, names, 0, total, o.seed, epoch, 0, o.shuffle_buffer))
    )
    batches = max(1, batches_per_epoch(everything, o.micro_batch_size, o.world_size) - 1)  # readers' ends add some
    while True:
        targets = [
            _worker_quota(batches, workers, logical) * o.micro_batch_size
            for _ in range(o.world_size)
            for logical in range(workers)
        ]
        lengths, plans, start = [], [], 0
        for slot, target in enumerate(targets):
            good = min(total, start + target)  # a window holds at least one utterance: this many always fit
            plan = planned(slot, start, good)
            step = max(1, target)
            while good < total:  # gallop, then halve: the longest range whose windows fit the quota
                probe = min(total, good + step)
                trial = planned(slot, start, probe)
                if len(trial) > target:
                    low, high = good, probe
                    while high - low > 1:
                        middle = (low + high) // 2
                        trial = planned(slot, start, middle)
                        if len(trial) > target:
                            high = middle
                        else:
                            low, plan = middle, trial
                    good = low
                    break
                good, plan, step = probe, trial, step * 2
            lengths.append(good - start)
            plans.append(plan)
            start = good
        if start >= total:
            break
        batches += 1
    window, sizes = [0] * total, []
    for plan in plans:
        for group in plan:
            for position in group:
                window[position] = len(sizes)
            sizes.append(len(group))
    return PackPlan(lengths, window, sizes, batches)


def _exact_eval_samples(
    shards: list[str], counts: list[int] | None, rank: int, world_size: int, on_problem
) -> Iterator[dict]:
    """Every sample to exactly one reader: with counts, contiguous ranges of equal length (± 1) of the shards
    in order; without (a remote shard with no manifest), whole shards to readers, or every n-th sample of all
    shards when they are fewer than readers (problems then counted by the first reader only)."""
    slot, n_slots, _ = _reader_slot(rank, world_size)
    if counts is not None:
        total = sum(counts)
        start, stop = total * slot // n_slots, total * (slot + 1) // n_slots
        for shard, first, last, _ in _pieces([(i, 0, count) for i, count in enumerate(counts)], start, stop):
            yield from read_shard_range(shards[shard], first, last, on_problem)
        return
    if len(shards) >= n_slots:
        for url in shards[slot::n_slots]:
            yield from read_shard_range(url, on_problem=on_problem)
        return
    quiet = lambda reason, samples, detail: None  # noqa: E731 - the first reader counts the shards' problems
    samples = (s for url in shards for s in read_shard_range(url, on_problem=on_problem if slot == 0 else quiet))
    for index, sample in enumerate(samples):
        if index % n_slots == slot:
            yield sample


# ------------------------------------------------------------------------------------------ sample stages


def _count_problem(counter: SkipCounter, exact: bool, reason: str, samples: int, detail: str) -> None:
    """Samples a shard could not give (unreadable, truncated, shorter than its count) are counted and named.
    With estimated counts (`exact` False: a remote shard without manifest), a shard that ends before its
    estimate is no bad sample: only said."""
    if reason == "short_shard" and not exact:
        log.info("%s (its count was estimated from --epoch-samples)", detail)
    else:
        counter.add(reason, detail, samples)


def _skip(counter: SkipCounter, sample: dict, reason: str, detail: str) -> None:
    """Skip a bad sample: counted once an epoch, by the reader whose range holds it; a repeat of it (a reader's
    top-up, or a wrap-around) is only logged, as `_reader_samples` does for what a shard could not give."""
    if sample.get("__repeat__") or sample.get("repeat"):
        log.info("repeat: skipped (%s) %s", reason, detail)
    else:
        counter.add(reason, detail)


def _decode(
    samples: Iterable[dict],
    counter: SkipCounter,
    max_seconds: float = MAX_SECONDS,
    speeds: tuple[float, ...] | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[dict]:
    """Raw tar members -> {key, audio (16 kHz float32), text (raw transcript), meta}; with `speeds`, each clip
    at a speed drawn for (seed, epoch, key) (`wdsbr.augment.speed_perturb`)."""
    for sample in samples:
        key = sample.get("__key__", "?")
        audio_field = next((f for f in AUDIO_FIELDS if f in sample), None)
        if audio_field is None or "txt" not in sample:
            _skip(
                counter,
                sample,
                "missing_field",
                f"{key} in {sample.get('__url__')}: has {sorted(k for k in sample if not k.startswith('__'))}",
            )
            continue
        try:
            audio = load_audio(sample[audio_field])
            text = sample["txt"].decode("utf-8").strip()
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (AudioError, UnicodeDecodeError, ValueError) as error:
            _skip(counter, sample, "bad_audio", f"{key} in {sample.get('__url__')}: {error}")
            continue
        if len(audio) > max_seconds * 16_000:
            _skip(counter, sample, "too_long_audio", f"{key}: {len(audio) / 16_000:.1f} s > {max_seconds} s")
            continue
        if speeds:
            before = len(audio)
            audio, _ = speed_perturb(audio, key, speeds, seed, epoch, max_seconds)
            if meta.get("segments") and len(audio) != before:  # a window's segments move with its speech
                stretch = len(audio) / before
                meta = {
                    **meta,
                    "segments": [[start * stretch, end * stretch, text] for start, end, text in meta["segments"]],
                }
        yield {
            "key": key,
            "audio": audio,
            "text": text,
            "meta": meta,
            "repeat": sample.get("__repeat__", False),
            "source": sample.get("__source__"),
            "position": sample.get("__position__"),
        }


def _tokenize(
    samples: Iterable[dict],
    counter: SkipCounter,
    tokenizer,
    prompt_ids: list[int],
    normalize: Callable[[str], str],
    max_label_tokens: int,
) -> Iterator[dict]:
    """Clean the transcript and build labels: prompt (<|startoftranscript|><|br|><|transcribe|><|notimestamps|>)
    + text tokens + <|endoftext|>. Labels the decoder cannot hold are skipped, not truncated."""
    for sample in samples:
        cleaned = normalize(sample["text"])
        if not cleaned:
            _skip(
                counter, sample, "empty_text", f"{sample['key']}: transcript {sample['text']!r} is empty after cleaning"
            )
            continue
        labels = prompt_ids + tokenizer.encode(cleaned, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(labels) - 1 > max_label_tokens:  # the decoder sees the labels without the start token
            _skip(counter, sample, "too_long_text", f"{sample['key']}: {len(labels) - 1} tokens > {max_label_tokens}")
            continue
        meta = sample.get("meta") or {}
        timing = {}
        if meta.get("segments"):  # a window of a recording's sentences (shard_corpus.py --ali-windows)
            try:
                segments = [(float(start), float(end), normalize(text)) for start, end, text in meta["segments"]]
                check_segments(segments)
            except (TypeError, ValueError) as error:
                detail = f"{sample['key']}: KEY.json segments {str(meta['segments'])[:80]}: {error}"
                _skip(counter, sample, "bad_segments", detail)
                continue
            timing = {"segments": [segment for segment in segments if segment[2]]}
        previous = normalize(meta.get("previous_text") or "")
        yield {**sample, "labels": labels, "cleaned": cleaned, "previous": previous, **timing}


def _pack(
    samples: Iterable[dict],
    tokenizer,
    prompt_ids: list[int],
    max_label_tokens: int,
    max_seconds: float = MAX_SECONDS,
    gap_seconds: float = PACK_GAP_SECONDS,
    fraction: float = 1.0,
    plan: PackPlan | None = None,
    counter: SkipCounter | None = None,
) -> Iterator[dict]:
    """Concatenate consecutive utterances of the (shuffled) stream into one window of at most `max_seconds`,
    `gap_seconds` of silence between them, with their cleaned transcripts joined by a space as one label
    sequence within the decoder's limit. Greedy and in stream order: an utterance is never split, never
    dropped, never repeated, and at most one window is held in memory.

    `fraction` < 1 packs only that share of windows: a window whose first utterance's key hashes above it
    keeps that utterance alone, so the model also sees single-utterance windows like validation's.

    With a `plan` (exact packed epochs), an utterance goes to its planned window (by `position`), which is emitted
    once it holds all its planned utterances or the next one belongs elsewhere (a skipped utterance leaves it
    smaller); repeats (a reader's top-up) are packed greedily. A planned window whose real audio or labels do not
    fit after all (the manifest was wrong) is split, counted as `pack_split`."""
    gap = np.zeros(int(round(gap_seconds * SAMPLE_RATE)), dtype=np.float32)
    max_samples = int(max_seconds * SAMPLE_RATE)

    def labels_for(group: list[dict]) -> list[int]:
        text = " ".join(s["cleaned"] for s in group)  # re-encoded whole: BPE merges across the joins as in text
        return prompt_ids + tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]

    def window(group: list[dict], labels: list[int]) -> dict:
        pieces = [part for s in group for part in (gap, s["audio"])][1:]
        segments, offset = [], 0.0  # where each utterance lies in the window: --timestamps labels them
        for s in group:  # a recording's window keeps its own segments
            inside = s.get("segments") or [(0.0, len(s["audio"]) / SAMPLE_RATE, s["cleaned"])]
            segments += [(offset + start, offset + end, text) for start, end, text in inside]
            offset += (len(s["audio"]) + len(gap)) / SAMPLE_RATE
        return {
            "key": "+".join(s["key"] for s in group),
            "audio": np.concatenate(pieces),
            "segments": segments,
            "text": " ".join(s["text"] for s in group),
            "cleaned": " ".join(s["cleaned"] for s in group),
            "labels": labels,
            "utterances": len(group),
            "previous": group[0].get("previous", ""),
            "speech_seconds": sum(len(s["audio"]) for s in group) / SAMPLE_RATE,
            "repeat": any(s.get("repeat") for s in group),
            "sources": [s.get("source") for s in group],
        }

    def packs(sample: dict) -> bool:
        return fraction >= 1.0 or stable_seed(sample["key"]) / 2**64 < fraction

    def fits(group: list[dict], sample: dict) -> list[int] | None:
        length = sum(len(s["audio"]) for s in group) + len(gap) * len(group) + len(sample["audio"])
        labels = labels_for(group + [sample]) if length <= max_samples else None
        return labels if labels is not None and len(labels) - 1 <= max_label_tokens else None

    group: list[dict] = []
    group_labels: list[int] = []
    planned = None  # the planned window `group` fills; None: packed greedily
    for sample in samples:
        where = None if plan is None or sample.get("repeat") else plan.window[sample["position"]]
        if group and (where != planned or (planned is None and not packs(group[0]))):
            yield window(group, group_labels)
            group = []
        if group:
            labels = fits(group, sample)
            if labels is not None:
                group, group_labels = group + [sample], labels
            else:
                if planned is not None and counter is not None:
                    counter.add("pack_split", f"{sample['key']}: does not fit its planned window after all")
                yield window(group, group_labels)
                group, group_labels = [sample], sample["labels"]
        else:
            group, group_labels, planned = [sample], sample["labels"], where
        if planned is not None and len(group) == plan.sizes[planned]:  # complete: nothing waits for the next one
            yield window(group, group_labels)
            group = []
    if group:
        yield window(group, group_labels)


def _timestamp(
    samples: Iterable[dict],
    tokenizer,
    prompt_ids: list[int],
    max_label_tokens: int,
    fraction: float,
    seed: int,
    epoch: int,
) -> Iterator[dict]:
    """--timestamps: a share `fraction` of windows, drawn for (seed, epoch, key), get Whisper's timestamped labels
    (`wdsbr.timestamps.timed_labels`) from the utterances' known places in the window: a recording's window's
    segments (KEY.json, --ali-windows), a packed window's, or a single clip from its start to its end. A window
    whose timed labels would not fit the decoder keeps its plain ones (`timestamps` False)."""
    for sample in samples:
        timed = None
        if fraction > 0 and rng_for(seed, epoch, sample["key"], "timestamps").random() < fraction:
            segments = sample.get("segments") or [(0.0, len(sample["audio"]) / SAMPLE_RATE, sample["cleaned"])]
            timed = timed_labels(tokenizer, prompt_ids, segments, max_label_tokens)
        yield {**sample, "labels": timed or sample["labels"], "timestamps": timed is not None}


def _previous_text(
    samples: Iterable[dict], tokenizer, max_label_tokens: int, fraction: float, seed: int, epoch: int
) -> Iterator[dict]:
    """--prev-text: a share `fraction` of windows, drawn for (seed, epoch, key), are conditioned on the text
    before them, `<|startofprev|> previous <|startoftranscript|> …` (`wdsbr.timestamps.with_previous_text`), the
    previous text out of the loss. The text before a window is its recording's (`previous_text` in KEY.json,
    which tools/shard_corpus.py writes for .ali segments), else the window before it in this reader's stream,
    an unrelated one, which teaches the model that a prompt may not be about this audio. A reader's first
    window without a recording's text has none and stays plain. A resumed run replays this stage (the resume
    skip comes after it), so its windows are conditioned exactly as an uninterrupted run's."""
    before = ""
    for sample in samples:
        previous = sample.get("previous") or before
        before = sample["cleaned"]
        if previous and rng_for(seed, epoch, sample["key"], "prev-text").random() < fraction:
            inputs, labels = with_previous_text(
                sample["labels"],
                tokenizer.encode(" " + previous, add_special_tokens=False),
                tokenizer,
                max_label_tokens,
            )
            yield {**sample, "decoder_input_ids": inputs, "labels": labels}
        else:
            yield sample


def _worker_quota(batches_per_rank: int, workers: int, logical: int) -> int:
    """Batches of a rank's epoch that its worker `logical` yields: the DataLoader takes them round-robin."""
    return batches_per_rank // workers + (1 if logical < batches_per_rank % workers else 0)


def _take_batches(batches: Iterable[list], rank: int, world_size: int, rotation: int, batches_per_rank: int):
    """This worker's exact share of the epoch's batches, without those a resumed run already consumed."""
    _, n_slots, logical = _reader_slot(rank, world_size, rotation)
    workers = n_slots // world_size
    quota = _worker_quota(batches_per_rank, workers, logical)
    consumed = max(0, -(-(rotation - logical) // workers))  # batches k < rotation with k % workers == logical
    for index, batch in enumerate(batches):
        if index >= quota:
            return
        if index >= consumed:
            yield batch


# ------------------------------------------------------------------------------------------------ loaders


@functools.cache  # once per process, not every epoch
def _warn_estimated(first_shard: str, epoch_samples: int, n_shards: int) -> None:
    log.warning(
        "%s: no per-shard sample counts (no manifest.json for these shards): assuming --epoch-samples %d "
        "spread evenly over %d shards; an epoch is one exact pass only with real counts",
        first_shard,
        epoch_samples,
        n_shards,
    )


@functools.cache  # once per process, not every epoch
def _warn_unplanned(first_shard: str) -> None:
    log.warning(
        "%s: no per-clip seconds in manifest.json (shards written by an older tools/shard_corpus.py, or "
        "--epoch-samples given): a packed epoch is about one pass, not an exact one; shard again for exact ones",
        first_shard,
    )


def batches_per_epoch(epoch_samples: int, micro_batch_size: int, world_size: int) -> int:
    """Training batches each rank runs per epoch: the same on every rank, whatever the shard sizes."""
    return max(1, math.ceil(epoch_samples / (world_size * micro_batch_size)))


def _init_worker(trainer_pid: int, _worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1/SIGINT to the trainer: a launcher that signals the whole process
    tree must not kill the batch the trainer needs to finish its step and checkpoint. Workers exit with it,
    however it ends (`_exit_with`)."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    _exit_with(trainer_pid)


def _exit_with(trainer_pid: int) -> None:
    """Exit this worker as soon as the trainer that made it is gone. torch's own watchdog follows the worker's
    parent, which is the forkserver, not the trainer: a trainer killed with SIGKILL (the OOM killer, `srun
    --kill-on-bad-exit` after a lost rank) left its workers, their forkserver and resource tracker running for
    ever, each keeping the others alive through inherited pipes, and holding the job's log open (srun waited a
    minute for them). A pidfd wakes a thread the moment the trainer ends; without one (not Linux), a poll."""
    try:
        pidfd = os.pidfd_open(trainer_pid)
    except ProcessLookupError:
        os._exit(1)  # gone already
    except (AttributeError, OSError):
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while _alive(trainer_pid):
                time.sleep(1.0)
        os._exit(1)  # nothing to flush: the batches had no one left to go to

    threading.Thread(target=watch, name="wdsbr-exit-with-trainer", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _worker_context():
    """Workers come from a forkserver that imported this module once: cheap to start, and never forked from the
    trainer itself, whose threads (DeepSpeed, gloo, tqdm, queue feeders) can leave CPython 3.11's thread-state
    lock held in a forked child, which then hangs forever (seen at an evaluation under Slurm)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["wdsbr.data"])
    return context


def _loader(pipeline: wds.DataPipeline, num_workers: int) -> torch.utils.data.DataLoader:
    """The DataLoader of a stream. Its own generator: `iter()` draws the workers' base seed from it, not from torch's
    global RNG, which dropout (LoRA's among others) draws from. `EpochStream` makes the next epoch's iterator in a
    thread, at a moment that depends on the machine's load, so a draw from the global RNG there moved the dropout
    masks between a straight run and a resumed one. The stream's own randomness comes from (seed, epoch, reader)."""
    return torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
        worker_init_fn=functools.partial(_init_worker, os.getpid()) if num_workers else None,
        multiprocessing_context=_worker_context() if num_workers else None,
    )


@dataclass
class LoaderOptions:
    """How a loader turns shards into batches for one model on one rank: what both streams need, then what only
    training uses (its data order, packing, timestamps, augmentation) and what only evaluation uses."""

    tokenizer: Any
    prompt_ids: list[int]  # the Whisper prompt every label starts with (<|startoftranscript|><|br|><|transcribe|>…)
    n_mels: int
    micro_batch_size: int
    num_workers: int = 2
    rank: int = 0
    world_size: int = 1
    skip_counter: SkipCounter | None = None  # shared by the workers; None: the loader counts in its own
    normalize: Callable[[str], str] = clean_text
    max_label_tokens: int = 448
    decoder_start_token_id: int | None = None  # None: the prompt's first token
    # training only
    seed: int = 0
    shuffle_buffer: int = 1000
    epoch_samples: int | None = None
    pack: float = 0.0
    spec_augment: bool | SpecAugment = False
    speed_perturb: str | tuple[float, ...] | None = None
    timestamps: float = 0.0
    prev_text: float = 0.0
    # evaluation only: batches carry the waveforms instead of log-mel features (for faster-whisper)
    keep_audio: bool = False


def _are_sources(shards) -> bool:
    return isinstance(shards, (list, tuple)) and bool(shards) and all(isinstance(item, Source) for item in shards)


def make_train_loader(
    shards, options: LoaderOptions, *, epoch: int = 0, start_batch: int = 0
) -> torch.utils.data.DataLoader:
    """The training stream of one epoch on this rank: exactly `batches_per_epoch(...)` batches, of which the
    first `start_batch` are skipped (already consumed by the run being resumed). Every sample of the shards is
    in exactly one batch of the epoch, but for the last `world_size × micro_batch − 1` at most, which repeat the
    epoch's first samples to fill its batches, and the top-ups of readers that skipped bad samples: a batch's
    `repeated` names them. Per-shard counts come from manifest.json or the tar headers (`shard_counts`); for
    remote shards without manifest, `epoch_samples` is assumed spread evenly (an exact pass needs real counts).
    `epoch_samples` also sets a shorter or longer epoch than one pass.

    `shards` may be a list of `Source`s (--train-shards NAME=SPEC@FACTOR, repeated): an epoch then shows each
    sample of a source ⌊factor⌋ or ⌈factor⌉ times, the sources interleaved sample by sample (`_epoch_segments`,
    `_interleave`); the rest of the contract holds as for one source.
    Each batch's `sources` counts its utterances by source name.

    `pack` (0 to 1): that share of samples are windows of several consecutive utterances (`_pack`). With the
    manifest's per-clip seconds the epoch is planned (`_pack_plan`) and exact as above, windows for samples;
    without them (older shards, or `epoch_samples`), it holds about as many windows as the shards' audio fills
    (manifest seconds / (30 s × PACK_FILL)), interpolated for a fraction: about one pass, not an exact one.

    Augmentation, deterministic for (seed, epoch, key) so a resume stays exact (`wdsbr.augment`): `spec_augment`
    (True: `SpecAugment()`'s defaults) masks the features, `speed_perturb` ("0.9,1.0,1.1") changes each clip's
    speed before them.

    `timestamps` (0 to 1): that share of windows, drawn for (seed, epoch, key), is labelled with timestamps
    (`_timestamp`); the rest keep `<|notimestamps|>`. `prev_text` (0 to 1): that share of windows is conditioned
    on the text before it, out of the loss (`_previous_text`)."""
    o = options
    sources = list(shards) if _are_sources(shards) else [Source("train", shards)]
    listed = [list_shards(source.shards) for source in sources]
    shards = [shard for group in listed for shard in group]
    names = [source.name for source, group in zip(sources, listed) for _ in group]
    counts, exact = [shard_counts(group) for group in listed], True
    if None in counts:
        if len(sources) > 1 or sources[0].factor != 1:  # weighting needs each source's real size
            source, group = next((s, g) for s, g, c in zip(sources, listed, counts) if c is None)
            raise ValueError(
                f"{source.name}: {group[0]}: no per-shard sample counts (no manifest.json beside it): "
                "several sources or a factor need them (tools/shard_corpus.py writes the manifest)"
            )
        if not o.epoch_samples:
            count_samples(shards)  # raises, naming the manifest and --epoch-samples
        n, estimate = len(shards), o.epoch_samples
        counts, exact = [[estimate * (i + 1) // n - estimate * i // n for i in range(n)]], False
        _warn_estimated(shards[0], estimate, n)
    if not sum(map(sum, counts)):
        raise ValueError(f"{shards[0]}: the training shards hold no samples")
    factors = [source.factor for source in sources]
    segments = _epoch_segments(counts, factors, o.seed, epoch)
    planned = sum(last - first for _, first, last in segments)  # this epoch's samples, factors applied
    epoch_samples = o.epoch_samples or planned
    clips = _clip_table(shards, [n for group in counts for n in group]) if o.pack and not o.epoch_samples else None
    if o.pack and clips is None:
        _warn_unplanned(shards[0])
    if o.pack and clips is None:
        parts = [count_seconds(group) for group in listed]
        seconds = None if None in parts else sum(source.factor * part for source, part in zip(sources, parts))
        if seconds is not None:
            windows = math.ceil((seconds + PACK_GAP_SECONDS * epoch_samples) / (MAX_SECONDS * PACK_FILL))
            epoch_samples = min(epoch_samples, math.ceil((1 - o.pack) * epoch_samples + o.pack * windows))
    batches_per_rank = batches_per_epoch(epoch_samples, o.micro_batch_size, o.world_size)
    lengths = reader_lengths(
        batches_per_rank, o.world_size, o.num_workers, o.micro_batch_size, planned if o.pack else None
    )
    if len(sources) > 1:  # pieces a quarter of a reader's range: every reader gets each source in its share
        segments = _epoch_segments(
            counts, factors, o.seed, epoch, piece=max(1, min((n for n in lengths if n), default=4) // 4)
        )
    speeds = parse_speeds(o.speed_perturb) if isinstance(o.speed_perturb, str) else o.speed_perturb
    plan = _pack_plan(segments, names, clips, o, epoch, speeds) if clips is not None else None
    if plan is not None:
        batches_per_rank, lengths = plan.batches_per_rank, plan.lengths
    if not 0 <= start_batch < batches_per_rank:
        raise ValueError(f"start_batch {start_batch} is outside the epoch's {batches_per_rank} batches")
    spec_augment = SpecAugment() if o.spec_augment is True else o.spec_augment or None
    counter = o.skip_counter or SkipCounter()
    pipeline = wds.DataPipeline(
        # this reader's contiguous range of the epoch's shard sequence (entering a shard mid-way by seeking over
        # tar headers), shuffled as raw bytes (before the costly decode); unreadable samples counted and named
        functools.partial(
            _planned_train_samples,
            shards,
            names,
            segments,
            lengths,
            o.seed,
            epoch,
            o.rank,
            o.world_size,
            start_batch,
            o.shuffle_buffer,
            functools.partial(_count_problem, counter, exact),
            plan is not None,
        ),
        # decode audio to 16 kHz, drop and count bad samples; --speed-perturb: resample each clip to its speed
        functools.partial(_decode, counter=counter, speeds=speeds, seed=o.seed, epoch=epoch),
        # clean text, add the Whisper prompt, drop and count labels that are too long
        functools.partial(
            _tokenize,
            counter=counter,
            tokenizer=o.tokenizer,
            prompt_ids=o.prompt_ids,
            normalize=o.normalize,
            max_label_tokens=o.max_label_tokens,
        ),
        # --pack: consecutive utterances share one 30 s window and one label sequence
        *(
            [
                functools.partial(
                    _pack,
                    tokenizer=o.tokenizer,
                    prompt_ids=o.prompt_ids,
                    max_label_tokens=o.max_label_tokens,
                    fraction=o.pack,
                    plan=plan,
                    counter=counter,
                )
            ]
            if o.pack
            else []
        ),
        # --timestamps: a share of windows labelled <|0.00|> text <|2.40|> … from where their utterances lie
        *(
            [
                functools.partial(
                    _timestamp,
                    tokenizer=o.tokenizer,
                    prompt_ids=o.prompt_ids,
                    max_label_tokens=o.max_label_tokens,
                    fraction=o.timestamps,
                    seed=o.seed,
                    epoch=epoch,
                )
            ]
            if o.timestamps
            else []
        ),
        # --prev-text: a share of windows prompted with <|startofprev|> and the text before them, out of the loss
        *(
            [
                functools.partial(
                    _previous_text,
                    tokenizer=o.tokenizer,
                    max_label_tokens=o.max_label_tokens,
                    fraction=o.prev_text,
                    seed=o.seed,
                    epoch=epoch,
                )
            ]
            if o.prev_text
            else []
        ),
        # group into micro-batches of decoded samples (features are computed after the resume skip)
        wds.batched(o.micro_batch_size, collation_fn=None, partial=False),
        # exactly this worker's share of the epoch
        functools.partial(
            _take_batches, rank=o.rank, world_size=o.world_size, rotation=start_batch, batches_per_rank=batches_per_rank
        ),
        # log-mel features + padded labels; --spec-augment: time and frequency masks inside each clip's frames
        wds.map(
            Collator(
                o.n_mels,
                o.decoder_start_token_id if o.decoder_start_token_id is not None else o.prompt_ids[0],
                spec_augment=spec_augment,
                seed=o.seed,
                epoch=epoch,
            )
        ),
    )
    loader = _loader(pipeline, o.num_workers)
    loader.batches_per_rank = batches_per_rank  # for progress bars and epoch bookkeeping
    loader.skip_counter = counter
    return loader


LOOKAHEAD_BATCHES = 64  # EpochStream: the next epoch's loader starts this many batches before the current one ends


class EpochStream:
    """The training batches of one epoch after another, as (epoch, batch) pairs without end. `make(epoch,
    start_batch)` builds one epoch's loader (make_train_loader); the next epoch's is started — its workers spawned,
    their shuffle buffers filled, their first batches prefetched — `lookahead` batches before the current epoch
    ends, so that the epoch boundary does not wait for workers to start (2–5 s each time here; on a small corpus
    on fast GPUs, 10–15 % of the run). Each epoch is still `make`'s exact epoch: the stream only overlaps their
    start-up. Where the run stands (epoch, batch) is the trainer's to keep and resume from; `batches_per_rank` is
    the current epoch's."""

    def __init__(
        self,
        make: Callable[[int, int], torch.utils.data.DataLoader],
        epoch: int = 0,
        start_batch: int = 0,
        lookahead: int = LOOKAHEAD_BATCHES,
    ) -> None:
        self.make, self.epoch, self.start_batch, self.lookahead = make, epoch, start_batch, max(1, lookahead)
        self.loader: torch.utils.data.DataLoader | None = None
        self.running: dict[int, tuple] = {}  # the started epochs' (loader, batch iterator) (two near a boundary)
        self.pending: dict[int, tuple[threading.Thread, list]] = {}  # an epoch whose workers a thread is spawning

    @property
    def batches_per_rank(self) -> int:
        return self.loader.batches_per_rank

    def _start(self, epoch: int, start: int, background: bool = False) -> None:
        """Make an epoch's loader and its iterator: making it plans a packed epoch (about a second per 25,000
        clips), and a multi-worker loader spawns its workers when iterated, which blocks for as long as the
        forkserver takes to fork them (0.5–1.5 s each here, under load); in `background`, a thread does both while
        the current epoch trains on (`_started` waits for it)."""
        if not background:
            loader = self.make(epoch, start)
            self.running[epoch] = (loader, iter(loader))
            return
        result: list = []

        def spawn() -> None:
            try:
                loader = self.make(epoch, start)
                result.append((loader, iter(loader)))
            except BaseException as error:  # noqa: BLE001 - raised again in the trainer's thread by _started
                result.append(error)

        thread = threading.Thread(target=spawn, name=f"wdsbr-epoch-{epoch}", daemon=True)
        thread.start()
        self.pending[epoch] = (thread, result)

    def _started(self, epoch: int) -> tuple[torch.utils.data.DataLoader, Iterator]:
        if epoch in self.pending:
            thread, result = self.pending.pop(epoch)
            thread.join()
            if isinstance(result[0], BaseException):
                raise result[0]
            self.running[epoch] = result[0]
        return self.running[epoch]

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        epoch, start = self.epoch, self.start_batch
        self._start(epoch, start)
        try:
            while True:
                self.loader, batches = self._started(epoch)
                remaining, upcoming = self.loader.batches_per_rank - start, False
                for index, batch in enumerate(batches):
                    if not upcoming and remaining - index <= self.lookahead:
                        self._start(epoch + 1, 0, background=True)  # started while this epoch trains
                        upcoming = True
                    yield epoch, batch
                if not upcoming:  # an epoch that ended before its count (a loader stopped early)
                    self._start(epoch + 1, 0)
                del self.running[epoch]
                epoch, start = epoch + 1, 0
        finally:  # the trainer stopped mid-stream: end the workers of both epochs now, not at garbage collection
            for pending in list(self.pending):
                try:
                    self._started(pending)
                except Exception:  # noqa: BLE001 - an epoch never trained on: its error does not matter now
                    pass
            for _, iterator in self.running.values():
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
            self.running.clear()


def make_eval_loader(shards, options: LoaderOptions) -> torch.utils.data.DataLoader:
    """One exact pass over the shards: every sample scored by exactly one (rank, worker); last batch partial.
    `options.keep_audio`: batches carry the waveforms instead of log-mel features (for faster-whisper)."""
    o = options
    shards = list_shards(shards)
    counter = o.skip_counter or SkipCounter()
    pipeline = wds.DataPipeline(
        # this reader's exact share of the samples, in shard order; unreadable samples counted and named
        functools.partial(
            _exact_eval_samples,
            shards,
            shard_counts(shards),
            o.rank,
            o.world_size,
            functools.partial(_count_problem, counter, True),
        ),
        # decode audio to 16 kHz, drop and count bad samples
        functools.partial(_decode, counter=counter),
        # clean text, add the Whisper prompt (for the validation loss)
        functools.partial(
            _tokenize,
            counter=counter,
            tokenizer=o.tokenizer,
            prompt_ids=o.prompt_ids,
            normalize=o.normalize,
            max_label_tokens=o.max_label_tokens,
        ),
        # micro-batches, the last one partial
        wds.batched(
            o.micro_batch_size,
            collation_fn=Collator(
                o.n_mels,
                o.decoder_start_token_id if o.decoder_start_token_id is not None else o.prompt_ids[0],
                keep_audio=o.keep_audio,
            ),
            partial=True,
        ),
    )
    loader = _loader(pipeline, o.num_workers)
    loader.skip_counter = counter
    return loader

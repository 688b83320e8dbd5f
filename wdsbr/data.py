"""Streaming loaders: WebDataset shards -> batches of log-mel features and labels, on every rank and worker.

Two streams, one pipeline shape (read tar -> [shuffle] -> decode -> tokenize -> batch -> features):

* Training (`make_train_loader`) never runs dry and never hangs DDP. Shards are dealt to the job's readers
  (`rank × DataLoader worker`, a "slot") from an endless sequence of seeded permutations of the shard list, so
  every reader always has shards, even when there are fewer shards than readers or shard sizes differ. An
  epoch is a fixed number of batches per rank, `ceil(train samples / (world_size × micro_batch_size))`, the
  same on every rank; each worker yields its exact share. When shards divide evenly between readers an epoch
  is one exact pass; otherwise a reader with less than its share tops up from the next permutation and one
  with more leaves its surplus for a later epoch (each epoch deals a new permutation). The stream is a pure function of
  (seed, epoch, rank, worker), so a run resumed at batch b of an epoch skips exactly what it had consumed
  (before the features are computed) and sees the same batches after it as an uninterrupted run would.
* Validation (`make_eval_loader`) is one exact pass: every sample is read by exactly one slot. Shards are split
  between slots; with fewer shards than slots, every slot reads all shards and keeps every n-th sample.
  Ranks may get different batch counts: evaluation gathers results after its loop, no collective inside it.

A bad sample (truncated shard, missing field, undecodable audio, too long) is skipped and counted in a
`SkipCounter`, shared by the DataLoader's worker processes, that the trainer reads and logs.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import signal
import tarfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import braceexpand
import numpy as np
import torch
import webdataset as wds

from wdsbr.audio import SAMPLE_RATE, AudioError, load_audio
from wdsbr.collate import Collator
from wdsbr.text import clean_text

# DataLoader workers per rank when not given: 4, or fewer on a machine with fewer cores (torch warns beyond them)
DEFAULT_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

log = logging.getLogger(__name__)

MAX_SECONDS = 30.0  # Whisper's window: longer audio would be truncated away from its transcript
PACK_GAP_SECONDS = 0.3  # silence between packed utterances (--pack)
PACK_FILL = 0.9  # a greedy pack of short clips fills about this much of the window: sizes a packed epoch
AUDIO_FIELDS = ("flac", "wav", "mp3", "ogg")
SKIP_REASONS = ("corrupt_shard", "missing_field", "bad_audio", "too_long_audio", "empty_text", "too_long_text")


class SkipCounter:
    """Counts of skipped samples by reason, shared between the main process and its DataLoader workers."""

    def __init__(self) -> None:
        self._counts = _worker_context().Array("q", len(SKIP_REASONS))  # the context the workers come from

    def add(self, reason: str, detail: str = "") -> None:
        with self._counts.get_lock():
            self._counts[SKIP_REASONS.index(reason)] += 1
        log.warning("skipped sample (%s) %s", reason, detail)

    def as_dict(self) -> dict[str, int]:
        with self._counts.get_lock():
            return {reason: int(n) for reason, n in zip(SKIP_REASONS, self._counts) if n}

    def total(self) -> int:
        return sum(self.as_dict().values())


# ---------------------------------------------------------------------------------------------- shard lists

def _is_url(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec


def list_shards(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shards from a folder (its `*.tar`), a brace pattern (`shards/train/shard-{000000..000009}.tar`), a list
    of any of those, or URLs (`pipe:…`, `https://…`). A spec that expands to nothing is an error."""
    if isinstance(spec, (list, tuple)):
        shards = [shard for item in spec for shard in list_shards(item)]
    else:
        spec = str(spec)
        if _is_url(spec):
            shards = list(braceexpand.braceexpand(spec))
        elif os.path.isdir(spec):
            shards = sorted(str(p) for p in Path(spec).glob("*.tar"))
            if not shards:
                raise FileNotFoundError(f"{spec}: folder has no .tar shards (write them with tools/shard_corpus.py)")
        else:
            shards = list(braceexpand.braceexpand(spec))
            missing = [s for s in shards if not os.path.isfile(s)]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: shard not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if not shards:
        raise FileNotFoundError(f"{spec}: no shards")
    return shards


def count_samples(shards: Sequence[str]) -> int:
    """Samples in local shards: from the shard tool's manifest.json when it lists them, else from tar headers."""
    total = 0
    manifests: dict[Path, dict[str, int]] = {}
    for shard in shards:
        if _is_url(shard):
            raise ValueError(f"{shard}: cannot count samples of a remote shard; pass the epoch size (--epoch-samples)")
        path = Path(shard).resolve()
        root = path.parent.parent
        if root not in manifests:
            manifests[root] = _manifest_counts(root)
        count = manifests[root].get(str(path))
        if count is None:
            with tarfile.open(path) as tar:
                count = len({name.split("/")[-1].split(".")[0] for name in tar.getnames()})
        total += count
    return total


def _manifest_counts(root: Path, field: str = "samples") -> dict[str, float]:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        return {str((root / shard["file"]).resolve()): shard[field]
                for split in manifest["splits"].values() for shard in split["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def count_seconds(shards: Sequence[str]) -> float | None:
    """Seconds of audio in local shards, from the shard tool's manifest.json; None when it does not list them."""
    if any(_is_url(shard) for shard in shards):
        return None
    seconds = {}
    for root in {Path(shard).resolve().parent.parent for shard in shards}:
        seconds.update(_manifest_counts(root, "seconds"))
    found = [seconds.get(str(Path(shard).resolve())) for shard in shards]
    return None if None in found else float(sum(found))


def _seed(*parts: int | str) -> int:
    """A stable 64-bit seed from parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:8], "little")


def _reader_slot(rank: int, world_size: int, rotation: int = 0) -> tuple[int, int, int]:
    """(slot, n_slots, logical worker) of the calling DataLoader worker. `rotation` renumbers workers so that
    after a resume at batch b the first worker asked for a batch is the one that owns batch b."""
    info = torch.utils.data.get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    logical = (worker + rotation) % workers
    return rank * workers + logical, world_size * workers, logical


def _dealt_train_samples(shards: list[str], seed: int, epoch: int, rank: int, world_size: int, rotation: int,
                         bufsize: int, handler) -> Iterator[dict]:
    """This reader's raw samples for an epoch, shuffled, never running dry.

    Pass k deals a seeded permutation of the shards round-robin to the readers, continuing where pass k-1 left
    off; this reader's share of a pass goes through a shuffle buffer that is flushed at the end of the pass,
    so the first pass is seen in full before any repeat. A reader whose share holds fewer samples than its
    batch quota (uneven shards, skipped samples, or no shard at all) tops up from the next pass.
    """
    slot, n_slots, _ = _reader_slot(rank, world_size, rotation)
    rng = random.Random(_seed(seed, epoch, slot))
    position, empty_passes = 0, 0
    for sweep in itertools.count():
        order = list(shards)
        random.Random(_seed(seed, epoch, sweep)).shuffle(order)
        mine = [{"url": url} for i, url in enumerate(order) if (position + i) % n_slots == slot]
        position += len(order)
        count = 0
        for sample in wds.shuffle(bufsize, initial=min(bufsize, 100), rng=rng)(wds.tarfile_to_samples(handler=handler)(iter(mine))):
            count += 1
            yield sample
        empty_passes = empty_passes + 1 if mine and not count else 0
        if empty_passes >= 3:
            raise RuntimeError(f"training shards yield no readable samples (last tried: {mine[0]['url']})")


def _exact_eval_samples(shards: list[str], rank: int, world_size: int, handler) -> Iterator[dict]:
    """Every sample to exactly one reader: shards split between readers, or samples when shards are fewer."""
    slot, n_slots, _ = _reader_slot(rank, world_size)
    if len(shards) >= n_slots:
        yield from wds.tarfile_to_samples(handler=handler)({"url": url} for url in shards[slot::n_slots])
        return
    for index, sample in enumerate(wds.tarfile_to_samples(handler=handler)({"url": url} for url in shards)):
        if index % n_slots == slot:
            yield sample


# ------------------------------------------------------------------------------------------ sample stages

def _count_and_continue(counter: SkipCounter, error: Exception) -> bool:
    """webdataset handler: a truncated or unreadable shard member is skipped, counted and named."""
    counter.add("corrupt_shard", repr(error)[:300])
    return True


def _decode(samples: Iterable[dict], counter: SkipCounter, max_seconds: float = MAX_SECONDS) -> Iterator[dict]:
    """Raw tar members -> {key, audio (16 kHz float32), text (raw transcript), meta}."""
    for sample in samples:
        key = sample.get("__key__", "?")
        audio_field = next((f for f in AUDIO_FIELDS if f in sample), None)
        if audio_field is None or "txt" not in sample:
            counter.add("missing_field", f"{key} in {sample.get('__url__')}: has {sorted(k for k in sample if not k.startswith('__'))}")
            continue
        try:
            audio = load_audio(sample[audio_field])
            text = sample["txt"].decode("utf-8").strip()
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (AudioError, UnicodeDecodeError, ValueError) as error:
            counter.add("bad_audio", f"{key} in {sample.get('__url__')}: {error}")
            continue
        if len(audio) > max_seconds * 16_000:
            counter.add("too_long_audio", f"{key}: {len(audio) / 16_000:.1f} s > {max_seconds} s")
            continue
        yield {"key": key, "audio": audio, "text": text, "meta": meta}


def _tokenize(samples: Iterable[dict], counter: SkipCounter, tokenizer, prompt_ids: list[int],
              normalize: Callable[[str], str], max_label_tokens: int) -> Iterator[dict]:
    """Clean the transcript and build labels: prompt (<|startoftranscript|><|br|><|transcribe|><|notimestamps|>)
    + text tokens + <|endoftext|>. Labels the decoder cannot hold are skipped, not truncated."""
    for sample in samples:
        cleaned = normalize(sample["text"])
        if not cleaned:
            counter.add("empty_text", f"{sample['key']}: transcript {sample['text']!r} is empty after cleaning")
            continue
        labels = prompt_ids + tokenizer.encode(cleaned, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(labels) - 1 > max_label_tokens:  # the decoder sees the labels without the start token
            counter.add("too_long_text", f"{sample['key']}: {len(labels) - 1} tokens > {max_label_tokens}")
            continue
        yield {**sample, "labels": labels, "cleaned": cleaned}


def _pack(samples: Iterable[dict], tokenizer, prompt_ids: list[int], max_label_tokens: int,
          max_seconds: float = MAX_SECONDS, gap_seconds: float = PACK_GAP_SECONDS, fraction: float = 1.0) -> Iterator[dict]:
    """Concatenate consecutive utterances of the (shuffled) stream into one window of at most `max_seconds`,
    `gap_seconds` of silence between them, with their cleaned transcripts joined by a space as one label
    sequence within the decoder's limit. Greedy and in stream order: an utterance is never split, never
    dropped, never repeated, and at most one window is held in memory.

    `fraction` < 1 packs only that share of windows: a window whose first utterance's key hashes above it
    keeps that utterance alone, so the model also sees single-utterance windows like validation's."""
    gap = np.zeros(int(round(gap_seconds * SAMPLE_RATE)), dtype=np.float32)
    max_samples = int(max_seconds * SAMPLE_RATE)

    def labels_for(group: list[dict]) -> list[int]:
        text = " ".join(s["cleaned"] for s in group)  # re-encoded whole: BPE merges across the joins as in text
        return prompt_ids + tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]

    def window(group: list[dict], labels: list[int]) -> dict:
        pieces = [part for s in group for part in (gap, s["audio"])][1:]
        return {"key": "+".join(s["key"] for s in group), "audio": np.concatenate(pieces),
                "text": " ".join(s["text"] for s in group), "labels": labels, "utterances": len(group),
                "speech_seconds": sum(len(s["audio"]) for s in group) / SAMPLE_RATE}

    def packs(sample: dict) -> bool:
        return fraction >= 1.0 or _seed(sample["key"]) / 2**64 < fraction

    group: list[dict] = []
    group_labels: list[int] = []
    for sample in samples:
        if group and not packs(group[0]):
            yield window(group, group_labels)
            group = []
        if group:
            length = sum(len(s["audio"]) for s in group) + len(gap) * len(group) + len(sample["audio"])
            labels = labels_for(group + [sample]) if length <= max_samples else None
            if labels is not None and len(labels) - 1 <= max_label_tokens:
                group, group_labels = group + [sample], labels
                continue
            yield window(group, group_labels)
        group, group_labels = [sample], sample["labels"]
    if group:
        yield window(group, group_labels)


def _take_batches(batches: Iterable[list], rank: int, world_size: int, rotation: int, batches_per_rank: int):
    """This worker's exact share of the epoch's batches, without those a resumed run already consumed."""
    _, n_slots, logical = _reader_slot(rank, world_size, rotation)
    workers = n_slots // world_size
    quota = batches_per_rank // workers + (1 if logical < batches_per_rank % workers else 0)
    consumed = max(0, -(-(rotation - logical) // workers))  # batches k < rotation with k % workers == logical
    for index, batch in enumerate(batches):
        if index >= quota:
            return
        if index >= consumed:
            yield batch


# ------------------------------------------------------------------------------------------------ loaders

@functools.lru_cache(maxsize=None)  # once per process, not every epoch
def _warn_few_shards(n_shards: int, n_readers: int) -> None:
    if n_shards < n_readers:
        log.warning("%d training shards for %d readers (ranks × DataLoader workers): readers without a shard of their "
                    "own read other readers' shards; write more, smaller shards (--samples-per-shard)", n_shards, n_readers)


def batches_per_epoch(epoch_samples: int, micro_batch_size: int, world_size: int) -> int:
    """Training batches each rank runs per epoch: the same on every rank, whatever the shard sizes."""
    return max(1, math.ceil(epoch_samples / (world_size * micro_batch_size)))


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1/SIGINT to the trainer: a launcher that signals the whole process
    tree must not kill the batch the trainer needs to finish its step and checkpoint. Workers exit with it."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _worker_context():
    """Workers come from a forkserver that imported this module once: cheap to start, and never forked from the
    trainer itself, whose threads (DeepSpeed, gloo, tqdm, queue feeders) can leave CPython 3.11's thread-state
    lock held in a forked child, which then hangs forever (seen at an evaluation under Slurm)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["wdsbr.data"])
    return context


def _loader(pipeline: wds.DataPipeline, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if num_workers else None, persistent_workers=False,
        worker_init_fn=_ignore_stop_signals if num_workers else None,
        multiprocessing_context=_worker_context() if num_workers else None)


def make_train_loader(shards, tokenizer, prompt_ids: list[int], *, n_mels: int, micro_batch_size: int,
                      seed: int = 0, epoch: int = 0, start_batch: int = 0, num_workers: int = 2,
                      shuffle_buffer: int = 1000, epoch_samples: int | None = None, rank: int = 0,
                      world_size: int = 1, skip_counter: SkipCounter | None = None,
                      normalize: Callable[[str], str] = clean_text, max_label_tokens: int = 448,
                      decoder_start_token_id: int | None = None, pack: float = 0.0) -> torch.utils.data.DataLoader:
    """The training stream of one epoch on this rank: exactly `batches_per_epoch(...)` batches, of which the
    first `start_batch` are skipped (already consumed by the run being resumed).

    `pack` (0 to 1): that share of samples are windows of several consecutive utterances (`_pack`); an epoch
    then holds fewer windows, sized from the shards' audio (manifest seconds / (30 s × PACK_FILL)) for full
    packing, interpolated for a fraction: about one pass."""
    shards = list_shards(shards)
    epoch_samples = epoch_samples or count_samples(shards)
    if pack:
        seconds = count_seconds(shards)
        if seconds is not None:
            windows = math.ceil((seconds + PACK_GAP_SECONDS * epoch_samples) / (MAX_SECONDS * PACK_FILL))
            epoch_samples = min(epoch_samples, math.ceil((1 - pack) * epoch_samples + pack * windows))
    batches_per_rank = batches_per_epoch(epoch_samples, micro_batch_size, world_size)
    if not 0 <= start_batch < batches_per_rank:
        raise ValueError(f"start_batch {start_batch} is outside the epoch's {batches_per_rank} batches")
    counter = skip_counter or SkipCounter()
    handler = functools.partial(_count_and_continue, counter)
    _warn_few_shards(len(shards), world_size * max(1, num_workers))
    pipeline = wds.DataPipeline(
        # this reader's share of the shards, read from tar and shuffled as raw bytes (before the costly decode);
        # a truncated shard ends that shard, counted
        functools.partial(_dealt_train_samples, shards, seed, epoch, rank, world_size, start_batch,
                          shuffle_buffer, handler),
        # decode audio to 16 kHz, drop and count bad samples
        functools.partial(_decode, counter=counter),
        # clean text, add the Whisper prompt, drop and count labels that are too long
        functools.partial(_tokenize, counter=counter, tokenizer=tokenizer, prompt_ids=prompt_ids,
                          normalize=normalize, max_label_tokens=max_label_tokens),
        # --pack: consecutive utterances share one 30 s window and one label sequence
        *([functools.partial(_pack, tokenizer=tokenizer, prompt_ids=prompt_ids, max_label_tokens=max_label_tokens,
                             fraction=pack)] if pack else []),
        # group into micro-batches of decoded samples (features are computed after the resume skip)
        wds.batched(micro_batch_size, collation_fn=None, partial=False),
        # exactly this worker's share of the epoch
        functools.partial(_take_batches, rank=rank, world_size=world_size, rotation=start_batch,
                          batches_per_rank=batches_per_rank),
        # log-mel features + padded labels
        wds.map(Collator(n_mels, decoder_start_token_id if decoder_start_token_id is not None else prompt_ids[0])),
    )
    loader = _loader(pipeline, num_workers)
    loader.batches_per_rank = batches_per_rank  # for progress bars and epoch bookkeeping
    loader.skip_counter = counter
    return loader


def make_eval_loader(shards, tokenizer, prompt_ids: list[int], *, n_mels: int, micro_batch_size: int,
                     num_workers: int = 2, rank: int = 0, world_size: int = 1,
                     skip_counter: SkipCounter | None = None, normalize: Callable[[str], str] = clean_text,
                     max_label_tokens: int = 448,
                     decoder_start_token_id: int | None = None) -> torch.utils.data.DataLoader:
    """One exact pass over the shards: every sample scored by exactly one (rank, worker); last batch partial."""
    shards = list_shards(shards)
    counter = skip_counter or SkipCounter()
    handler = functools.partial(_count_and_continue, counter)
    pipeline = wds.DataPipeline(
        # this reader's exact share of the samples, in shard order
        functools.partial(_exact_eval_samples, shards, rank, world_size, handler),
        # decode audio to 16 kHz, drop and count bad samples
        functools.partial(_decode, counter=counter),
        # clean text, add the Whisper prompt (for the validation loss)
        functools.partial(_tokenize, counter=counter, tokenizer=tokenizer, prompt_ids=prompt_ids,
                          normalize=normalize, max_label_tokens=max_label_tokens),
        # micro-batches, the last one partial
        wds.batched(micro_batch_size, collation_fn=Collator(
            n_mels, decoder_start_token_id if decoder_start_token_id is not None else prompt_ids[0]), partial=True),
    )
    loader = _loader(pipeline, num_workers)
    loader.skip_counter = counter
    return loader

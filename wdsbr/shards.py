"""Writing shards: decode every corpus item in a process pool, check it, and write WebDataset tars + manifest.

    entries (wdsbr.corpus) ──► shuffle listed entries by --seed ──► assign split (given, else hash)
      ──► process pool, bounded and in order: transcript → decode (the whole file, or only an .ali segment of a
          long recording) → mono → 16 kHz → duration → PCM-16 flac/wav
      ──► parent: one SplitWriter per split → OUT/{train,validation,test}/shard-NNNNNN.tar ──► OUT/manifest.json

A sample is three tar members with one key: `KEY.flac` (or `.wav`), `KEY.txt` (the transcript as given,
stripped) and `KEY.json` (`duration`, `source`, `sample_rate_in`, `speaker` when known, and whatever else the
source gives). Shards and the manifest's `splits` are byte-identical across runs and across `--workers`:
the parent writes results in input order and every tar member has mtime 0. The manifest's `overlap` counts the
speakers and sentences (after `clean_text`) written both to train and to validation or test.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tarfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

import wdsbr
from wdsbr.ali import SegmentPastEnd, read_segment
from wdsbr.audio import (
    SAMPLE_RATE,
    WINDOW_SECONDS,
    AudioError,
    EmptyAudioError,
    decode_audio,
    encode_audio,
    probe_seconds,
    resample,
)
from wdsbr.corpus import SPLITS, Corpus, Item, Rejection, assign_split, read_transcript
from wdsbr.streams import MANIFEST, TAR_BLOCK, list_shards
from wdsbr.text import clean_text, plural

SHARD_PATTERN = "shard-%06d.tar"
_TAR_TAIL = 20 * TAR_BLOCK  # end-of-archive blocks padded to tarfile's 10 KiB record


class ShardError(ValueError):
    """A problem with the run as a whole (options, output folder, nothing kept); the message says how to fix it."""


@dataclass(frozen=True)
class ShardOptions:
    """Everything that decides what is written (all of it goes to the manifest's "options")."""

    val_fraction: float = 0.05
    test_fraction: float = 0.05
    samples_per_shard: int = 1000
    max_shard_bytes: int = 500_000_000
    audio_format: str = "flac"
    min_seconds: float = 0.2  # shorter clips are blips or broken files, not speech worth a label
    max_seconds: float = WINDOW_SECONDS  # longer audio would be cut off from its transcript
    seed: int = 0
    workers: int = 0  # 0: one per available CPU; output does not depend on it


@dataclass(frozen=True)
class Sample:
    """A decoded, validated sample ready for the tar: its members and what the manifest counts."""

    key: str
    split: str
    speaker: str | None
    fields: dict[str, bytes]  # tar member extension -> bytes
    seconds: float
    bytes_in: int  # size of the source audio, for throughput
    sentence: bytes = b""  # digest of the transcript after clean_text, to count sentences shared across splits


def default_workers() -> int:
    """CPUs this process may use (respects taskset / Slurm cpu binding)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_options(options: ShardOptions) -> list[str]:
    """Every problem with the options, each with the fix; empty when they are fine."""
    problems = []
    for name in ("val_fraction", "test_fraction"):
        value = getattr(options, name)
        if not 0.0 <= value < 1.0:
            problems.append(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
    if options.val_fraction + options.test_fraction >= 1.0:
        total = options.val_fraction + options.test_fraction
        problems.append(f"--val-fraction + --test-fraction = {total:g}: must be < 1 to leave some train")
    if options.samples_per_shard < 1:
        problems.append(f"--samples-per-shard {options.samples_per_shard}: must be at least 1")
    if options.max_shard_bytes < 1:
        problems.append(f"--max-shard-bytes {options.max_shard_bytes}: must be positive")
    if options.audio_format not in ("flac", "wav"):
        problems.append(f"--audio-format {options.audio_format!r}: must be flac or wav")
    if options.min_seconds < 0 or options.max_seconds <= options.min_seconds:
        problems.append(
            f"--min-seconds {options.min_seconds:g} / --max-seconds {options.max_seconds:g}: need 0 <= min < max"
        )
    if options.workers < 0:
        problems.append(f"--workers {options.workers}: must be 0 (all CPUs) or more")
    return problems


def check_output_dir(output_dir: str | Path, *, overwrite: bool, source: str | Path | None = None) -> Path:
    """Refuse a non-empty output folder without `overwrite`, and an output that would delete the source."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ShardError(f"{output_dir}: exists and is not a folder")
    if source is not None:
        source = Path(source).resolve()
        resolved = output_dir.resolve()
        doomed = [resolved, *(resolved / split for split in SPLITS)]
        if any(source == folder or folder in source.parents for folder in doomed):
            raise ShardError(
                f"{output_dir}: the output folder would contain or replace the source {source}; choose another output"
            )
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ShardError(
            f"{output_dir}: output folder is not empty; pass --overwrite to replace its shards and manifest"
        )
    return output_dir


@dataclass(frozen=True)
class Exclusion:
    """--exclude-sentences: sentences no written sample may say (a validation or test set's, so that training
    never sees them), compared after `normalize` (the scoring normaliser: "Demat!" and "demat" are one)."""

    specs: tuple[str, ...]
    sentences: frozenset[str]
    normalize: Callable[[str], str]


def read_sentences(spec: str | Path | list) -> list[str]:
    """The sentences of --exclude-sentences SPEC: a text file (one a line), a folder of ID.txt, or shards (a
    folder holding .tar files, its split folders too, or a brace pattern or URL: their .txt members)."""
    if isinstance(spec, (list, tuple)):
        return [sentence for item in spec for sentence in read_sentences(item)]
    path = Path(spec)
    if path.is_file() and path.suffix != ".tar":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.is_dir():
        tars = [str(tar) for tar in sorted(path.rglob("*.tar"))]
        if not tars:
            texts = sorted(path.rglob("*.txt"))
            if not texts:
                raise FileNotFoundError(f"{spec}: no .txt files and no .tar shards (--exclude-sentences)")
            return [text.read_text(encoding="utf-8").strip() for text in texts]
    sentences = []
    for shard in tars if path.is_dir() else list_shards(spec):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".txt"):
                    sentences.append(tar.extractfile(member).read().decode("utf-8").strip())
    return sentences


def load_exclusion(specs: Sequence[str], normalize: Callable[[str], str]) -> Exclusion:
    """The leakage guard of --exclude-sentences SPEC (repeated): every sentence they hold, normalised."""
    sentences = frozenset(normalize(text) for spec in specs for text in read_sentences(spec))
    return Exclusion(tuple(specs), sentences - {""}, normalize)


def prepare_sample(item: Item, options: ShardOptions, exclude: Exclusion | None = None) -> Sample | Rejection:
    """Worker: read the transcript, decode and resample the audio, check the duration, encode the members."""
    text = read_transcript(item)
    if isinstance(text, Rejection):
        return text
    if exclude is not None and exclude.normalize(text) in exclude.sentences:
        return Rejection(
            item.source, "leaked_sentence", f"{text!r} is in --exclude-sentences {', '.join(exclude.specs)}"
        )
    if isinstance(item.audio, (bytes, bytearray)):
        bytes_in = len(item.audio)
    else:
        try:
            bytes_in = os.path.getsize(item.audio)
        except OSError as error:
            return Rejection(item.source, "missing_file", f"{item.audio}: {error.strerror or error}")
    if bytes_in == 0:
        return Rejection(item.source, "empty_audio", "the audio file is 0 bytes")
    if item.segment is not None:  # a sentence of a long recording (.ali): decode only its segment
        start, end = item.segment
        if end - start > options.max_seconds:
            return Rejection(
                item.source,
                "too_long",
                f"segment {start:g}-{end:g} s is {end - start:.2f} s > --max-seconds {options.max_seconds:g}",
            )
    else:
        # Refuse an hour-long file from its header before decoding it all into memory; the margin covers
        # approximate headers, and the decoded length below is the real check.
        header_seconds = probe_seconds(item.audio)
        if header_seconds is not None and header_seconds > 2 * options.max_seconds + 1:
            return Rejection(
                item.source, "too_long", f"{header_seconds:.2f} s (file header) > --max-seconds {options.max_seconds:g}"
            )
    try:
        if item.segment is not None:
            samples, sample_rate_in, recording_seconds = read_segment(item.audio, *item.segment)
            bytes_in = int(bytes_in * len(samples) / sample_rate_in / recording_seconds)  # this segment's share
        else:
            samples, sample_rate_in = decode_audio(item.audio)
        samples = resample(samples, sample_rate_in, SAMPLE_RATE)
    except SegmentPastEnd as error:
        return Rejection(item.source, "beyond_recording_end", str(error))
    except EmptyAudioError as error:
        return Rejection(item.source, "empty_audio", str(error))
    except AudioError as error:
        return Rejection(item.source, "unreadable_audio", str(error))
    if len(samples) == 0:
        return Rejection(
            item.source, "empty_audio", f"nothing left after resampling {sample_rate_in} Hz to {SAMPLE_RATE} Hz"
        )
    seconds = len(samples) / SAMPLE_RATE
    if seconds < options.min_seconds:
        return Rejection(item.source, "too_short", f"{seconds:.3f} s < --min-seconds {options.min_seconds:g}")
    if seconds > options.max_seconds:
        return Rejection(item.source, "too_long", f"{seconds:.2f} s > --max-seconds {options.max_seconds:g}")

    metadata = {**item.meta, "duration": seconds, "source": item.source, "sample_rate_in": sample_rate_in}
    if item.speaker is not None:
        metadata["speaker"] = item.speaker
    fields = {
        options.audio_format: encode_audio(samples, SAMPLE_RATE, options.audio_format),
        "txt": text.encode("utf-8"),
        "json": json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8"),
    }
    assert item.split is not None, "the parent assigns every split before decoding"
    return Sample(item.key, item.split, item.speaker, fields, seconds, bytes_in, sentence_digest(text))


def sentence_digest(text: str) -> bytes:
    """16 bytes identifying a transcript after `clean_text` (what the manifest's sentence overlap compares);
    empty when nothing is left to compare."""
    cleaned = clean_text(text)
    return hashlib.blake2b(cleaned.encode("utf-8"), digest_size=16).digest() if cleaned else b""


def count_overlap(writers: dict[str, SplitWriter]) -> dict[str, Any]:
    """Speakers and sentences written to train that were also written to validation or test: the manifest's
    proof that held-out data is held out (0 and 0 for `--cv-train validated`)."""
    held_speakers = writers["validation"].speakers | writers["test"].speakers
    held_sentences = writers["validation"].sentences | writers["test"].sentences
    return {
        "between": "train and validation+test",
        "speakers": len(writers["train"].speakers & held_speakers),
        "sentences": len(writers["train"].sentences & held_sentences),
        "sentences_compared": "after wdsbr.text.clean_text (so exact repeats count too)",
    }


def ordered_map(function: Callable, items: Iterable, workers: int, *, chunk_size: int = 8) -> Iterator:
    """`map(function, items)` over a process pool, in input order, with a bounded number of items in flight.

    `Pool.imap` and `Executor.map` read the whole input ahead, which holds every HF audio blob in memory;
    here at most 2 × workers chunks are submitted at a time. `spawn` workers: the parent may hold threads
    (tqdm, datasets) that `fork` would copy in an unknown state.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        iterator = iter(items)
        while chunk := list(islice(iterator, chunk_size)):
            pending.append(pool.submit(_map_chunk, function, chunk))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _map_chunk(function: Callable, chunk: list) -> list:
    return [function(item) for item in chunk]


class SplitWriter:
    """Writes one split's samples to OUT/SPLIT/shard-NNNNNN.tar, starting a new shard at --samples-per-shard
    samples or before --max-shard-bytes would be passed (a single larger sample gets a shard of its own)."""

    def __init__(self, output_dir: Path, split: str, *, samples_per_shard: int, max_shard_bytes: int):
        self.output_dir = output_dir
        self.split = split
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.shards: list[dict[str, Any]] = []  # manifest rows of the closed shards
        self.speakers: set[str] = set()
        self.sentences: set[bytes] = set()  # sentence_digest of every transcript written
        self._tar = None
        self._name = ""
        self._samples = 0
        self._seconds = 0.0
        self._bytes = 0
        self._clips: list[list] = []  # [key, seconds, transcript bytes] of each sample, in tar order: plans packing
        (output_dir / split).mkdir(parents=True, exist_ok=True)

    def write(self, sample: Sample) -> None:
        size = sum(TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK for data in sample.fields.values())
        if self._tar is not None and (
            self._samples >= self.samples_per_shard or self._bytes + size + _TAR_TAIL > self.max_shard_bytes
        ):
            self._close_shard()
        if self._tar is None:
            self._open_shard()
        self._tar.write({"__key__": sample.key, **sample.fields})
        self._clips.append([sample.key, round(sample.seconds, 3), len(sample.fields.get("txt", b""))])
        self._samples += 1
        self._seconds += sample.seconds
        self._bytes += size
        if sample.speaker is not None:
            self.speakers.add(sample.speaker)
        if sample.sentence:
            self.sentences.add(sample.sentence)

    def close(self) -> None:
        if self._tar is not None:
            self._close_shard()

    def _open_shard(self) -> None:
        import webdataset  # imported here: it imports torch, which the spawned decode workers never need

        self._name = f"{self.split}/{SHARD_PATTERN % len(self.shards)}"
        # encoder=False: members are already bytes; mtime=0 makes the tar bytes reproducible
        self._tar = webdataset.TarWriter(str(self.output_dir / self._name), encoder=False, mtime=0)
        self._samples, self._seconds, self._bytes, self._clips = 0, 0.0, 0, []

    def _close_shard(self) -> None:
        self._tar.close()
        self._tar = None
        size = (self.output_dir / self._name).stat().st_size
        self.shards.append(
            {
                "file": self._name,
                "samples": self._samples,
                "seconds": round(self._seconds, 3),
                "bytes": size,
                "clips": self._clips,
            }
        )

    def summary(self) -> dict[str, Any]:
        seconds = sum((shard["seconds"] for shard in self.shards), 0.0)
        return {
            "shards": self.shards,
            "samples": sum(shard["samples"] for shard in self.shards),
            "seconds": round(seconds, 3),
            "hours": round(seconds / 3600, 6),
            "speakers": len(self.speakers),  # distinct known speakers (0 when the source has none)
        }


def shard_corpus(
    corpus: Corpus,
    output_dir: str | Path,
    options: ShardOptions,
    *,
    overwrite: bool = False,
    progress: bool = True,
    exclude: Exclusion | None = None,
) -> dict[str, Any]:
    """Write every kept sample of `corpus` into split shards under `output_dir`; return the manifest (also written).

    Raises ShardError for bad options, a non-empty output without `overwrite`, a source with no inputs, or a run
    that kept nothing (the manifest with its rejections is still written then).
    """
    problems = check_options(options)
    if problems:
        raise ShardError("; ".join(problems))
    source_path = corpus.description.get("path")  # None for an HF dataset
    source_name = source_path or corpus.description.get("name")
    output_dir = check_output_dir(output_dir, overwrite=overwrite, source=source_path)
    if corpus.total == 0:
        raise ShardError(
            f"{source_name}: no inputs found (expected ID.wav + ID.txt pairs, a Common Voice release or a .tsv)"
        )
    workers = options.workers or default_workers()
    started = time.perf_counter()

    # Old split folders and manifest go only now, after the source and options were checked.
    for split in SPLITS:
        shutil.rmtree(output_dir / split, ignore_errors=True)
    (output_dir / MANIFEST).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)

    entries: Iterable[Item | Rejection] = corpus.entries
    if corpus.listed:  # mix speakers and folders across shards; a stream keeps its own order
        entries = list(entries)
        random.Random(options.seed).shuffle(entries)
    writers = {
        split: SplitWriter(
            output_dir, split, samples_per_shard=options.samples_per_shard, max_shard_bytes=options.max_shard_bytes
        )
        for split in SPLITS
    }
    rejected: list[Rejection] = []
    found = kept = bytes_in = 0
    bar = tqdm(
        total=corpus.total, unit="clip", desc="sharding", file=sys.stderr, disable=not progress, dynamic_ncols=True
    )
    with bar:

        def items_to_decode() -> Iterator[Item]:
            """Listing rejections are recorded here; items get their split before going to the pool."""
            nonlocal found
            for entry in entries:
                found += 1
                if isinstance(entry, Rejection):
                    rejected.append(entry)
                    bar.update(1)
                else:
                    yield replace(entry, split=assign_split(entry, options.val_fraction, options.test_fraction))

        for result in ordered_map(
            partial(prepare_sample, options=options, exclude=exclude), items_to_decode(), workers
        ):
            if isinstance(result, Rejection):
                rejected.append(result)
            else:
                writers[result.split].write(result)
                kept += 1
                bytes_in += result.bytes_in
            bar.update(1)
            bar.set_postfix(kept=kept, rejected=len(rejected), refresh=False)
    for writer in writers.values():
        writer.close()
    elapsed = time.perf_counter() - started

    rejected.sort(key=lambda rejection: (rejection.source, rejection.reason))
    by_reason = Counter(rejection.reason for rejection in rejected)
    assert kept + len(rejected) == found, "every input is either written or rejected"
    manifest = {
        "tool": "wdsbr shard_corpus",
        "version": wdsbr.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": corpus.description,
        "sample_rate": SAMPLE_RATE,
        "audio_format": options.audio_format,
        "options": asdict(options),
        **(
            {"excluded_sentences": {"from": list(exclude.specs), "sentences": len(exclude.sentences)}}
            if exclude
            else {}
        ),
        "splits": {split: writer.summary() for split, writer in writers.items()},
        "overlap": count_overlap(writers),
        "rejected": [asdict(rejection) for rejection in rejected],
        "counts": {
            "found": found,
            "kept": kept,
            "rejected": len(rejected),
            "rejected_by_reason": dict(sorted(by_reason.items())),
        },
        "run": {
            "workers": workers,
            "wall_seconds": round(elapsed, 3),
            "clips_per_second": round(found / elapsed, 2) if elapsed > 0 else None,
            "input_bytes": bytes_in,
            "input_megabytes_per_second": round(bytes_in / 1e6 / elapsed, 2) if elapsed > 0 else None,
        },
    }
    save_manifest(manifest, output_dir / MANIFEST)
    if found == 0:
        raise ShardError(f"{source_name}: no inputs found")
    if kept == 0:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(by_reason.items()))
        raise ShardError(
            f"nothing kept: all {len(rejected)} inputs were rejected ({reasons}); see {output_dir / MANIFEST}"
        )
    return manifest


def save_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Write the manifest atomically: a crash leaves the old file or none, never half a file."""
    partial_path = path.with_name(path.name + ".tmp")
    partial_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial_path, path)


def format_summary(manifest: dict[str, Any], output_dir: str | Path) -> str:
    """The closing lines a run prints: kept/rejected by reason, samples and hours per split, throughput."""
    counts = manifest["counts"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in counts["rejected_by_reason"].items())
    lines = [
        f"kept {counts['kept']} of {counts['found']} inputs; rejected {counts['rejected']}"
        + (f" ({reasons})" if reasons else "")
    ]
    for split, summary in manifest["splits"].items():
        shards = plural(len(summary["shards"]), "shard")
        lines.append(f"  {split:<10} {summary['samples']:>8} samples {summary['hours']:>10.3f} h {shards:>10}")
    run = manifest["run"]
    overlap = manifest.get("overlap")
    if overlap:
        known = any(summary.get("speakers") for summary in manifest["splits"].values())
        speakers = plural(overlap["speakers"], "speaker") if known else "speakers unknown"
        lines.append(
            f"  train shares {speakers} and {plural(overlap['sentences'], 'sentence')} with validation+test"
            if known
            else f"  train shares {plural(overlap['sentences'], 'sentence')} with validation+test ({speakers})"
        )
    lines.append(
        f"{counts['found']} inputs in {run['wall_seconds']:.1f} s with {plural(run['workers'], 'worker')}: "
        f"{run['clips_per_second'] or 0:.1f} clips/s, {run['input_megabytes_per_second'] or 0:.2f} MB/s of source audio"
    )
    lines.append(f"wrote {Path(output_dir) / MANIFEST}")
    return "\n".join(lines)


def empty_split_warnings(manifest: dict[str, Any]) -> list[str]:
    """One line per split the options ask for that came out empty (the trainer needs train and validation):
    a split given by the source (its folder, TSV or HF split), or a hashed one with a fraction above 0."""
    options, splits = manifest["options"], manifest["splits"]
    wanted = {"train": True, "validation": options["val_fraction"] > 0, "test": options["test_fraction"] > 0}
    warnings = []
    for split, asked in wanted.items():
        if asked and not splits.get(split, {}).get("samples"):
            why = (
                f"--{'val' if split == 'validation' else split}-fraction "
                f"{options['val_fraction' if split == 'validation' else 'test_fraction']}"
                if split != "train"
                else "every input"
            )
            hint = (
                " (with --speaker-from-folder or known speakers, whole speakers are hashed: a corpus of few speakers"
                " needs a larger fraction, or split folders train/ validation/ test/)"
                if split != "train"
                else ""
            )
            warnings.append(f"warning: the {split} split is empty although {why} asks for it{hint}")
    return warnings

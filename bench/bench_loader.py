"""Benchmark the streaming loader: samples/s from tar shards to padded batches of log-mel features + labels.

    python bench/bench_loader.py [--clips 384] [--batch-size 16] [--repeats 3]

Writes a corpus of speech-like 2-8 s clips, shards it with the project's own writer (flac), then times one
training epoch of `wdsbr.data.make_train_loader` (read tar -> shuffle -> decode flac -> clean + tokenize ->
batch -> log-mel) with 0, 1 and 2 DataLoader workers, interleaved over several repetitions. "Per worker core"
is samples/s divided by max(1, workers). Writes bench/results/loader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from wdsbr.corpus import open_corpus  # noqa: E402
from wdsbr.data import make_train_loader  # noqa: E402
from wdsbr.model import build_tiny_whisper, load_processor  # noqa: E402
from wdsbr.shards import ShardOptions, shard_corpus  # noqa: E402

WORDS = "demat kenavo trugarez c'hoant bara mor ti gêr brezhoneg skol levr amzer glav heol".split()


def write_corpus(folder: Path, n_clips: int, seed: int = 0) -> None:
    """Band-limited noise with a syllable-rate envelope: flac compresses it about like speech."""
    rng = np.random.default_rng(seed)
    for i in range(n_clips):
        seconds = rng.uniform(2, 8)
        t = np.arange(int(seconds * 16000)) / 16000
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t), 0, None)
        audio = np.convolve(rng.standard_normal(len(t)), np.ones(8) / 8, mode="same") * envelope * 0.3
        sf.write(folder / f"clip{i:05d}.wav", audio.astype(np.float32), 16000)
        words = rng.choice(WORDS, size=int(seconds * 2.5))
        (folder / f"clip{i:05d}.txt").write_text(" ".join(words).capitalize() + ".", encoding="utf-8")


def time_epoch(shards: Path, processor, num_workers: int, batch_size: int) -> tuple[float, int]:
    tokenizer = processor.tokenizer
    loader = make_train_loader(shards, tokenizer, list(tokenizer.prefix_tokens), n_mels=80,
                               micro_batch_size=batch_size, num_workers=num_workers, shuffle_buffer=256)
    start = time.perf_counter()
    samples = sum(batch["input_features"].shape[0] for batch in loader)
    return time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per loader process: what a worker gets on a busy training node

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus").mkdir()
        write_corpus(tmp / "corpus", args.clips)
        shard_corpus(open_corpus(tmp / "corpus"), tmp / "shards",
                     ShardOptions(val_fraction=0, test_fraction=0, samples_per_shard=32), progress=False)
        processor = load_processor(str(build_tiny_whisper(tmp / "tiny")), language="br")
        runs: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:  # interleaved: drift hits every candidate alike
                seconds, samples = time_epoch(tmp / "shards" / "train", processor, workers, args.batch_size)
                runs[workers].append(samples / seconds)

    rows = []
    print(f"loader: {args.clips} clips of 2-8 s, batch {args.batch_size}, torch threads 1, {os.cpu_count()} CPUs")
    print("| DataLoader workers | samples/s median | min-max | per worker core |")
    print("|---:|---:|---:|---:|")
    for workers, rates in runs.items():
        median = statistics.median(rates)
        rows.append({"num_workers": workers, "samples_per_s": rates, "median": median,
                     "per_worker_core": median / max(1, workers)})
        print(f"| {workers} | {median:.1f} | {min(rates):.1f}-{max(rates):.1f} | {median / max(1, workers):.1f} |")
    out = Path(__file__).resolve().parent / "results" / "loader.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"bench": "loader", "clips": args.clips, "batch_size": args.batch_size,
                               "cpu_count": os.cpu_count(), "machine": platform.machine(),
                               "torch": torch.__version__, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

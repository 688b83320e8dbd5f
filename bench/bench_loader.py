"""Benchmark the data pipeline: wdsbr's streaming loader against the Hugging Face recipe, on the same clips.

    python bench/bench_loader.py [--clips 256] [--batch-size 16] [--repeats 3] [--rss-base 64]
    python bench/bench_loader.py --sections epoch [--before c2b1d01]      # the exact epoch only (~5 min)
    python bench/bench_loader.py --sections sources [--clips 240]          # 3 named sources vs 1 (~3 min)
    python bench/bench_loader.py --sections boundary [--clips 96 --batch-size 8]  # the epoch-boundary stall (~2 min)
    python bench/bench_loader.py --sections boundary --pack --clips 1000 --batch-size 4  # the same, packed

Throughput (samples/s from stored audio to padded batches of [B, 80, 3000] log-mel + labels, torch threads 1 per
process, candidates interleaved over --repeats repetitions):
  - wdsbr, W workers     one epoch of `make_train_loader` over flac shards written by the project's own writer
                         (read tar -> shuffle -> decode flac -> clean + tokenize -> batch -> log-mel -> pad), with
                         W = 0 (all in the main process), 1 and 2 DataLoader workers
  - hf recipe, num_proc P  the Hugging Face fine-tuning blog: `dataset.map(prepare_dataset)` (decode, the
                         WhisperFeatureExtractor, the tokenizer; P = num_proc) then a shuffled DataLoader over the
                         mapped dataset with `DataCollatorSpeechSeq2SeqWithPadding` (num_workers = P - 1). The first
                         epoch pays map + iteration; later epochs read the cached Arrow file (iteration only).
"Per core" divides by the processes doing the work: max(1, W) for wdsbr, P for the recipe.

Peak memory as the corpus grows (1×, 4×, 16× --rss-base clips): one child process per measurement iterates one
epoch of each pipeline (everything in that process: 0 workers, map in process) and reports
getrusage(RUSAGE_SELF / RUSAGE_CHILDREN).ru_maxrss, which includes the resident pages of memory-mapped files (the
recipe reads its Arrow cache through mmap), and the peak anonymous memory (RSS minus file-backed pages, sampled
every 20 ms: what the corpus costs in heap and tensors); the recipe's Arrow cache size on disk is recorded too.
Writes bench/results/loader.json.

The exact epoch (`--sections epoch`), today's loader against the one at git commit --before (its
wdsbr/data.py, loaded beside today's package), on the same shards, 2 ranks × 2 DataLoader workers:
  - coverage: how many samples one epoch shows once, more than once and never: the issue-16 shards (44
    samples in plain webdataset shards of 14, 6, 1, 9, 3, 11; micro-batch 2 and 3) and the shard tool's
    layout (130 samples in shards of 32 and a last one of 2; micro-batch 4)
  - cost: samples/s of the raw read stage (tar -> shuffle buffer, each reader's quota of samples), where the
    mid-shard seek happens, and of the whole loader (to padded log-mel batches, 0 workers), on 1,000-sample
    shards (3,500 clips of 1 s in shards of 1,000, 1,000, 1,000 and 500, so every reader starts mid-shard),
    interleaved over --repeats. Writes bench/results/loader_epoch.json.

The epoch boundary (`--sections boundary`): --clips clips (2-8 s, flac), micro-batch --batch-size, 2 DataLoader
workers, --epochs epochs in a row, --step-seconds of sleep after each batch standing in for a training step (a GPU's
~0.3 s): how long the consumer waits for each batch, as one `make_train_loader` per epoch (the trainer before
EpochStream) and as `EpochStream` (the next epoch's loader started 64 batches before the current one ends),
interleaved over --repeats. The wait for the first batch of each later epoch is the stall. Writes
bench/results/loader_boundary.json; with --pack, packed epochs (each planned when its loader is made: in the
EpochStream's thread, in the consumer's for a loader per epoch), bench/results/loader_boundary_pack.json.

Several sources (`--sections sources`): the same --clips clips (2-8 s, flac) sharded as three corpora of a third
each, read by `make_train_loader` as one source (the three folders' shards together) and as three named sources
at factor 1 (`--train-shards a=… --train-shards b=… --train-shards c=…`): samples/s of one epoch to padded log-mel
batches with 1 DataLoader worker, interleaved over --repeats. Writes bench/results/loader_sources.json.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    AnonymousPeak,
    DataCollatorSpeechSeq2SeqWithPadding,
    child_rusage,
    fmt,
    hf_map,
    hf_raw_dataset,  # noqa: E402
    plural,
    print_table,
    run_measured,
    save_results,
    shard_folder,
    summarize,
    write_corpus,
)

from wdsbr import streams  # noqa: E402
from wdsbr.data import EpochStream, LoaderOptions, Source, make_train_loader  # noqa: E402
from wdsbr.model import build_tiny_whisper, load_processor  # noqa: E402


def wdsbr_name(workers: int) -> str:
    return f"wdsbr, {plural(workers, 'worker')}"


def hf_name(procs: int) -> str:
    return f"hf recipe, num_proc {procs}"


def quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def wdsbr_epoch(shards, processor, num_workers: int, batch_size: int) -> dict:
    tokenizer = processor.tokenizer
    loader = make_train_loader(
        shards,
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=80,
            micro_batch_size=batch_size,
            num_workers=num_workers,
            shuffle_buffer=256,
        ),
    )
    start = time.perf_counter()
    samples = sum(batch["input_features"].shape[0] for batch in loader)
    return {"samples": samples, "seconds": time.perf_counter() - start}


def hf_epochs(rows: list[dict], cache_dir: Path, processor, num_proc: int, batch_size: int) -> dict:
    """map (fresh, not from cache) + one shuffled epoch through the blog's collator."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    raw = hf_raw_dataset(rows, cache_dir)  # listing the corpus: not timed (wdsbr's sharding is not timed either)
    start = time.perf_counter()
    mapped = hf_map(raw, processor, num_proc=num_proc if num_proc > 1 else None)
    map_seconds = time.perf_counter() - start
    collator = DataCollatorSpeechSeq2SeqWithPadding(
        processor, processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    )
    loader = torch.utils.data.DataLoader(
        mapped, batch_size=batch_size, shuffle=True, collate_fn=collator, num_workers=num_proc - 1
    )
    start = time.perf_counter()
    samples = sum(batch["input_features"].shape[0] for batch in loader)
    iterate_seconds = time.perf_counter() - start
    cache_bytes = sum(os.path.getsize(f["filename"]) for f in mapped.cache_files)
    return {
        "samples": samples,
        "map_seconds": map_seconds,
        "iterate_seconds": iterate_seconds,
        "cache_mb": cache_bytes / 1e6,
        "clips": len(rows),
    }


# ---------------------------------------------------------------------------------------------- RSS child


def rss_child(args: argparse.Namespace) -> None:
    """One epoch of one pipeline in this (fresh) process; prints peak RSS (ru_maxrss: mapped files included) and
    peak anonymous memory (mapped files excluded) as JSON on the last line."""
    torch.set_num_threads(1)
    anonymous = AnonymousPeak()
    processor = load_processor(args.model, language="br")
    if args.rss_child == "wdsbr":  # `datasets` is not imported here: its import alone is ~90 MB
        result = wdsbr_epoch(Path(args.shards), processor, 0, args.batch_size)
    else:
        quiet_datasets()
        rows = json.loads(Path(args.rows).read_text())
        result = hf_epochs(rows, Path(args.cache), processor, 1, args.batch_size)
    print(json.dumps({**result, **child_rusage(), "anonymous_mb": anonymous.stop()}))


def measure_rss(kind: str, shards: Path, rows_file: Path, cache: Path, model: Path, batch_size: int) -> dict:
    """Run rss_child in a fresh process. Started through run_measured's small wrapper process, not forked from
    this one: Linux keeps a forked child's ru_maxrss from the parent's size at fork, across exec."""
    command = [
        sys.executable,
        __file__,
        "--rss-child",
        kind,
        "--shards",
        str(shards),
        "--rows",
        str(rows_file),
        "--cache",
        str(cache),
        "--model",
        str(model),
        "--batch-size",
        str(batch_size),
    ]
    measured = run_measured(command)
    if measured.rc != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{measured.output[-3000:]}")
    result = json.loads(measured.output.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)
    return {**result, "peak_tree_pss_mb": measured.peak_tree_pss_mb}


# -------------------------------------------------------------------------------------------- exact epoch


def load_before(ref: str, folder: Path):
    """wdsbr/data.py as it was at git commit `ref`, importable as `data_before` (it imports today's wdsbr.audio,
    wdsbr.collate and wdsbr.text, unchanged since); `folder` goes on sys.path, so workers import it too."""
    source = subprocess.run(
        ["git", "show", f"{ref}:wdsbr/data.py"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (folder / "data_before.py").write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("data_before")


def plain_shards(folder: Path, sizes: list[int], seconds: float) -> list[str]:
    """Shards written with plain webdataset (no manifest: counts from the tar headers), 1 s or shorter clips."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for seed in range(32):
        buffer = io.BytesIO()
        rng = np.random.default_rng(seed)
        sf.write(buffer, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000, format="WAV")
        clips.append(buffer.getvalue())
    paths = []
    for shard, size in enumerate(sizes):
        path = folder / f"shard-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for index in range(size):
                writer.write(
                    {"__key__": f"s{shard}_{index:04d}", "wav": clips[(shard + index) % len(clips)], "txt": "demat"}
                )
        paths.append(str(path))
    return paths


def coverage(
    module, shards: list[str], processor, micro_batch_size: int, world_size: int = 2, workers: int = 2
) -> dict:
    """One epoch on every rank: samples shown once, more than once, never; batches per rank."""
    tokenizer = processor.tokenizer
    seen, batches = collections.Counter(), []
    for rank in range(world_size):
        loader = module.make_train_loader(
            shards,
            LoaderOptions(
                tokenizer,
                list(tokenizer.prefix_tokens),
                n_mels=80,
                micro_batch_size=micro_batch_size,
                num_workers=workers,
                rank=rank,
                world_size=world_size,
                shuffle_buffer=64,
            ),
        )
        keys = [batch["keys"] for batch in loader]
        batches.append(len(keys))
        seen.update(key for batch in keys for key in batch)
    total = module.count_samples(shards)
    return {
        "samples": total,
        "once": sum(n == 1 for n in seen.values()),
        "repeated": sum(n > 1 for n in seen.values()),
        "never": total - len(seen),
        "extra_batch_slots": sum(n - 1 for n in seen.values()),
        "batches_per_rank": batches,
    }


def raw_epoch(
    module, shards: list[str], readers: int, micro_batch_size: int, batches_per_rank: int, today: bool
) -> dict:
    """Every reader's raw stage (tar -> shuffle buffer) for its quota of samples, readers = ranks here (0 workers)."""
    counts = module.shard_counts(shards) if today else None  # the loader counts once, before any reader
    start = time.perf_counter()
    samples = 0
    for rank in range(readers):
        if today:
            lengths = module.reader_lengths(batches_per_rank, readers, 0, micro_batch_size)
            raw = module._planned_train_samples(shards, counts, lengths, 0, 0, rank, readers, 0, 1000, lambda *a: None)
        else:
            raw = module._dealt_train_samples(shards, 0, 0, rank, readers, 0, 1000, lambda error: True)
        samples += sum(1 for _ in itertools.islice(raw, batches_per_rank * micro_batch_size))
    return {"samples": samples, "seconds": time.perf_counter() - start}


def loader_epoch(module, shards: list[str], processor, readers: int, micro_batch_size: int) -> dict:
    """One epoch of every rank's whole loader (0 workers), each counting the shards' samples from their tar
    headers as a loader does (today's count cache emptied first: both pay it every time)."""
    tokenizer = processor.tokenizer
    if hasattr(module, "shard_counts"):
        streams.tar_count.cache_clear()
    start = time.perf_counter()
    samples = 0
    for rank in range(readers):
        loader = module.make_train_loader(
            shards,
            LoaderOptions(
                tokenizer,
                list(tokenizer.prefix_tokens),
                n_mels=80,
                micro_batch_size=micro_batch_size,
                num_workers=0,
                rank=rank,
                world_size=readers,
                shuffle_buffer=1000,
            ),
        )
        samples += sum(batch["input_features"].shape[0] for batch in loader)
        if hasattr(module, "shard_counts"):
            streams.tar_count.cache_clear()
    return {"samples": samples, "seconds": time.perf_counter() - start}


def epoch_section(args: argparse.Namespace, tmp: Path, processor) -> dict:
    import wdsbr.data as today

    before = load_before(args.before, tmp)
    modules = {f"before ({args.before})": (before, False), "today": (today, True)}
    issue = plain_shards(tmp / "issue", [14, 6, 1, 9, 3, 11], seconds=0.3)
    layout = plain_shards(tmp / "layout", [32, 32, 32, 32, 2], seconds=0.3)
    scenarios = [
        ("issue-16 shards (14, 6, 1, 9, 3, 11), micro-batch 2", issue, 2),
        ("issue-16 shards (14, 6, 1, 9, 3, 11), micro-batch 3", issue, 3),
        ("shard tool layout (4 × 32 + 2), micro-batch 4", layout, 4),
    ]
    covered = [
        {"scenario": name, "version": version, **coverage(module, shards, processor, mb)}
        for name, shards, mb in scenarios
        for version, (module, _) in modules.items()
    ]

    big = plain_shards(tmp / "big", [1000, 1000, 1000, 500], seconds=1.0)
    readers, micro_batch_size = 4, 16
    batches = today.batches_per_epoch(3500, micro_batch_size, readers)
    runs = {(stage, version): [] for stage in ("raw read", "whole loader") for version in modules}
    for _ in range(args.repeats):  # interleaved: drift hits both alike
        for version, (module, is_today) in modules.items():
            runs[("raw read", version)].append(raw_epoch(module, big, readers, micro_batch_size, batches, is_today))
            runs[("whole loader", version)].append(loader_epoch(module, big, processor, readers, micro_batch_size))
    cost = [
        {
            "stage": stage,
            "version": version,
            "samples_per_s": summarize([r["samples"] / r["seconds"] for r in results]),
            "runs": results,
        }
        for (stage, version), results in runs.items()
    ]
    return {
        "ranks": 2,
        "workers": 2,
        "coverage": covered,
        "cost_shards": [1000, 1000, 1000, 500],
        "cost_readers": readers,
        "cost_micro_batch_size": micro_batch_size,
        "repeats": args.repeats,
        "cost": cost,
    }


def sources_section(args: argparse.Namespace, tmp: Path, processor) -> dict:
    """The same clips as one source and as three named sources (factor 1): one epoch each, interleaved."""
    third = args.clips // 3
    folders = []
    for index, name in enumerate("abc"):
        write_corpus(tmp / "sources" / name, third, start=index * third, audio_format="flac")
        folders.append(str(shard_folder(tmp / "sources" / name, tmp / "sources-shards" / name)))
    candidates = {
        "1 source": folders,
        "3 sources": [Source(name, folder, 1.0) for name, folder in zip("abc", folders)],
    }
    runs: dict[str, list[dict]] = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, shards in candidates.items():  # interleaved: drift hits both alike
            runs[name].append(wdsbr_epoch(shards, processor, 1, args.batch_size))
    throughput = {
        name: {"samples_per_s": summarize([r["samples"] / r["seconds"] for r in results]), "runs": results}
        for name, results in runs.items()
    }
    return {
        "clips": 3 * third,
        "batch_size": args.batch_size,
        "workers": 1,
        "repeats": args.repeats,
        "throughput": throughput,
    }


def boundary_waits(shards, processor, args, stream: bool) -> dict:
    """--epochs epochs of `make_train_loader` (2 workers, a 256-sample shuffle buffer), each batch followed by
    --step-seconds of sleep standing in for a training step: how long the consumer waited for each batch, as one
    loader per epoch (what the trainer did before EpochStream) or as an EpochStream."""
    tokenizer = processor.tokenizer
    options = LoaderOptions(
        tokenizer, list(tokenizer.prefix_tokens), n_mels=80, micro_batch_size=args.batch_size, num_workers=2,
        shuffle_buffer=256, pack=1.0 if args.pack else 0.0,
    )  # fmt: skip

    def make(epoch: int, start: int = 0):
        return make_train_loader(shards, options, epoch=epoch, start_batch=start)

    if stream:
        pairs = iter(EpochStream(make))
    else:
        pairs = ((epoch, batch) for epoch in range(args.epochs) for batch in make(epoch))
    waits: list[tuple[int, int, float]] = []  # (epoch, batch in epoch, seconds waited)
    index, last = 0, None
    while True:
        start = time.perf_counter()
        epoch, _ = next(pairs, (args.epochs, None))
        waited = time.perf_counter() - start
        index = 0 if epoch != last else index + 1
        if epoch == args.epochs:  # past the last epoch (the stream's next one has started: it is closed below)
            break
        waits.append((epoch, index, waited))
        last = epoch
        time.sleep(args.step_seconds)
    if hasattr(pairs, "close"):
        pairs.close()
    first = [w for e, i, w in waits if i == 0]
    return {
        "first_batch_s": first[0],
        "boundary_s": first[1:],
        "mid_epoch_median_s": statistics.median(w for e, i, w in waits if i > 0),
    }


def boundary_section(args: argparse.Namespace, tmp: Path, processor) -> dict:
    write_corpus(tmp / "boundary", args.clips, audio_format="flac")
    shards = str(shard_folder(tmp / "boundary", tmp / "boundary-shards"))
    runs: dict[str, list[dict]] = {"loader per epoch": [], "EpochStream": []}
    for _ in range(args.repeats):
        for name in runs:  # interleaved
            runs[name].append(boundary_waits(shards, processor, args, stream=name == "EpochStream"))
    return {
        "clips": args.clips,
        "batch_size": args.batch_size,
        "pack": args.pack,
        "workers": 2,
        "epochs": args.epochs,
        "step_seconds": args.step_seconds,
        "repeats": args.repeats,
        "runs": runs,
        "boundary_s": {name: summarize([w for r in rows for w in r["boundary_s"]]) for name, rows in runs.items()},
    }


def print_epoch(report: dict) -> None:
    print("\none epoch at 2 ranks × 2 workers: samples shown once / more than once / never\n")
    print_table(
        ["shards", "loader", "once", "repeated", "never", "batches per rank"],
        [
            [r["scenario"], r["version"], r["once"], r["repeated"], r["never"], r["batches_per_rank"]]
            for r in report["coverage"]
        ],
    )
    print(
        f"\nsamples/s on 3,500 clips of 1 s in shards of 1,000, 1,000, 1,000 and 500, {report['cost_readers']} "
        "readers, "
        f"{report['repeats']} repeats, median (min-max)\n"
    )
    print_table(
        ["stage", "loader", "samples/s"], [[r["stage"], r["version"], fmt(r["samples_per_s"])] for r in report["cost"]]
    )


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256, help="clips (2-8 s) in the throughput corpus")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="wdsbr DataLoader workers to time")
    parser.add_argument("--hf-procs", type=int, nargs="+", default=[1, 2], help="recipe num_proc values to time")
    parser.add_argument("--rss-base", type=int, default=64, help="clips in the 1× corpus of the memory test")
    parser.add_argument("--rss-scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["pipelines", "epoch", "sources", "boundary"],
        default=["pipelines", "epoch"],
        help="pipelines: throughput and memory against the recipe; epoch: the exact epoch; sources: 3 sources vs 1; "
        "boundary: the wait for an epoch's first batch, a loader per epoch vs EpochStream",
    )
    parser.add_argument("--epochs", type=int, default=3, help="boundary: epochs per run")
    parser.add_argument("--step-seconds", type=float, default=0.3, help="boundary: the stand-in training step")
    parser.add_argument(
        "--pack", action="store_true", help="boundary: packed epochs (each planned when its loader is made)"
    )
    parser.add_argument("--before", default="c2b1d01", help="git commit whose loader the exact epoch compares against")
    parser.add_argument("--rss-child", choices=["wdsbr", "hf"], help=argparse.SUPPRESS)
    for hidden in ("--shards", "--rows", "--cache", "--model"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args)
    torch.set_num_threads(1)  # one core per loader process: what a worker gets on a busy training node
    quiet_datasets()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        tmp = Path(tmp)
        model = build_tiny_whisper(tmp / "tiny")
        processor = load_processor(str(model), language="br")
        if "boundary" in args.sections:
            report = boundary_section(args, tmp, processor)
            name = "loader_boundary_pack" if args.pack else "loader_boundary"
            out = save_results(name, {**report, "bench_seconds": time.perf_counter() - started})
            print_table(
                ["training stream", "wait at an epoch boundary, s: median (min-max)", "mid-epoch median, s"],
                [
                    [name, fmt(report["boundary_s"][name], 2),
                     f"{statistics.median(r['mid_epoch_median_s'] for r in rows):.3f}"]
                    for name, rows in report["runs"].items()
                ],
            )  # fmt: skip
            print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
            if args.sections == ["boundary"]:
                return
        if "sources" in args.sections:
            report = sources_section(args, tmp, processor)
            out = save_results("loader_sources", {**report, "bench_seconds": time.perf_counter() - started})
            print_table(
                ["read as", "samples/s, median (min-max)"],
                [[name, fmt(row["samples_per_s"])] for name, row in report["throughput"].items()],
            )
            print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
            if args.sections == ["sources"]:
                return
        if "epoch" in args.sections:
            epoch = epoch_section(args, tmp, processor)
            out = save_results("loader_epoch", {**epoch, "bench_seconds": time.perf_counter() - started})
            print_epoch(epoch)
            print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")
            if "pipelines" not in args.sections:
                return
        # One corpus per memory scale; the throughput corpus is its own (--clips).
        rows = write_corpus(tmp / "corpus", args.clips, audio_format="flac")
        shards = shard_folder(tmp / "corpus", tmp / "shards")

        # -------------------------------------------------------------------------------- throughput
        names = [wdsbr_name(w) for w in args.workers] + [hf_name(p) for p in args.hf_procs]
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for workers in args.workers:  # interleaved: drift hits every candidate alike
                runs[wdsbr_name(workers)].append(wdsbr_epoch(shards, processor, workers, args.batch_size))
            for procs in args.hf_procs:
                runs[hf_name(procs)].append(hf_epochs(rows, tmp / "hf", processor, procs, args.batch_size))

        throughput = {}
        for name, results in runs.items():
            if name.startswith("wdsbr"):
                cores = max(1, next(w for w in args.workers if wdsbr_name(w) == name))
                rates = [r["samples"] / r["seconds"] for r in results]
                throughput[name] = {
                    "cores": cores,
                    "samples_per_s": summarize(rates),
                    "per_core": summarize([r / cores for r in rates]),
                    "runs": results,
                }
            else:
                cores = next(p for p in args.hf_procs if hf_name(p) == name)
                first = [r["samples"] / (r["map_seconds"] + r["iterate_seconds"]) for r in results]
                cached = [r["samples"] / r["iterate_seconds"] for r in results]
                throughput[name] = {
                    "cores": cores,
                    "samples_per_s": summarize(first),
                    "per_core": summarize([r / cores for r in first]),
                    "cached_epoch_samples_per_s": summarize(cached),
                    "map_samples_per_s": summarize([r["clips"] / r["map_seconds"] for r in results]),
                    "cache_mb_per_clip": results[0]["cache_mb"] / results[0]["clips"],
                    "runs": results,
                }
        reference = throughput[hf_name(args.hf_procs[0])]["per_core"]["median"]
        for result in throughput.values():
            result["per_core_vs_hf_recipe"] = result["per_core"]["median"] / reference

        # ------------------------------------------------------------------------------------ memory
        memory = []
        for scale in args.rss_scales:
            n_clips = args.rss_base * scale
            corpus = tmp / f"rss-{scale}"
            scale_rows = write_corpus(corpus, n_clips, seed=scale, audio_format="flac")
            scale_shards = shard_folder(corpus, tmp / f"rss-{scale}-shards")
            rows_file = tmp / f"rss-{scale}.json"
            rows_file.write_text(json.dumps(scale_rows))
            for kind in ("wdsbr", "hf"):
                result = measure_rss(kind, scale_shards, rows_file, tmp / "hf-rss", model, args.batch_size)
                memory.append({"pipeline": kind, "scale": scale, "clips": n_clips, **result})
            shutil.rmtree(corpus)

    report = {
        "clips": args.clips,
        "clip_seconds": [2, 8],
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": 1,
        "unit": "samples per second to padded batches",
        "throughput": throughput,
        "memory": memory,
        "bench_seconds": time.perf_counter() - started,
    }
    out = save_results("loader", report)

    print(
        f"\nloader: {args.clips} clips of 2-8 s (flac), batch {args.batch_size}, torch threads 1, {os.cpu_count()} "
        "CPUs, "
        f"{args.repeats} repeats, median (min-max)\n"
    )
    table = []
    for name, r in throughput.items():
        cached = fmt(r["cached_epoch_samples_per_s"]) if "cached_epoch_samples_per_s" in r else "same"
        table.append([name, fmt(r["samples_per_s"]), cached, fmt(r["per_core"]), f"{r['per_core_vs_hf_recipe']:.1f}x"])
    print_table(
        [
            "pipeline",
            "samples/s, first epoch",
            "samples/s, later epochs",
            "per core (first epoch)",
            "per core vs recipe",
        ],
        table,
    )
    print(
        f"\npeak RSS of one process iterating one epoch (MB); the recipe's Arrow cache is "
        f"{throughput[names[-1]]['cache_mb_per_clip']:.2f} MB per clip on disk\n"
    )
    print_table(
        ["clips", "wdsbr RSS / anonymous", "hf recipe RSS / anonymous", "hf cache on disk (MB)"],
        [
            [
                row["clips"],
                f"{row['self_mb']:.0f} / {row['anonymous_mb']:.0f}",
                f"{other['self_mb']:.0f} / {other['anonymous_mb']:.0f}",
                f"{other['cache_mb']:.0f}",
            ]
            for row, other in zip(memory[0::2], memory[1::2])
        ],
    )
    print(f"\nwrote {out} in {report['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

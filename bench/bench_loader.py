"""Benchmark the data pipeline: wdsbr's streaming loader against the Hugging Face recipe, on the same clips.

    python bench/bench_loader.py [--clips 256] [--batch-size 16] [--repeats 3] [--rss-base 64]

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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (AnonymousPeak, DataCollatorSpeechSeq2SeqWithPadding, child_rusage, fmt, hf_map, hf_raw_dataset,  # noqa: E402
                    plural, print_table, run_measured, save_results, shard_folder, summarize, write_corpus)

from wdsbr.data import make_train_loader  # noqa: E402
from wdsbr.model import build_tiny_whisper, load_processor  # noqa: E402


def wdsbr_name(workers: int) -> str:
    return f"wdsbr, {plural(workers, 'worker')}"


def hf_name(procs: int) -> str:
    return f"hf recipe, num_proc {procs}"


def quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def wdsbr_epoch(shards: Path, processor, num_workers: int, batch_size: int) -> dict:
    tokenizer = processor.tokenizer
    loader = make_train_loader(shards, tokenizer, list(tokenizer.prefix_tokens), n_mels=80,
                               micro_batch_size=batch_size, num_workers=num_workers, shuffle_buffer=256)
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
    collator = DataCollatorSpeechSeq2SeqWithPadding(processor, processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>"))
    loader = torch.utils.data.DataLoader(mapped, batch_size=batch_size, shuffle=True, collate_fn=collator,
                                         num_workers=num_proc - 1)
    start = time.perf_counter()
    samples = sum(batch["input_features"].shape[0] for batch in loader)
    iterate_seconds = time.perf_counter() - start
    cache_bytes = sum(os.path.getsize(f["filename"]) for f in mapped.cache_files)
    return {"samples": samples, "map_seconds": map_seconds, "iterate_seconds": iterate_seconds,
            "cache_mb": cache_bytes / 1e6, "clips": len(rows)}


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
    command = [sys.executable, __file__, "--rss-child", kind, "--shards", str(shards), "--rows", str(rows_file),
               "--cache", str(cache), "--model", str(model), "--batch-size", str(batch_size)]
    measured = run_measured(command)
    if measured.rc != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{measured.output[-3000:]}")
    result = json.loads(measured.output.strip().splitlines()[-1])
    shutil.rmtree(cache, ignore_errors=True)
    return {**result, "peak_tree_pss_mb": measured.peak_tree_pss_mb}


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
                throughput[name] = {"cores": cores, "samples_per_s": summarize(rates),
                                    "per_core": summarize([r / cores for r in rates]), "runs": results}
            else:
                cores = next(p for p in args.hf_procs if hf_name(p) == name)
                first = [r["samples"] / (r["map_seconds"] + r["iterate_seconds"]) for r in results]
                cached = [r["samples"] / r["iterate_seconds"] for r in results]
                throughput[name] = {"cores": cores, "samples_per_s": summarize(first), "per_core": summarize([r / cores for r in first]),
                                    "cached_epoch_samples_per_s": summarize(cached),
                                    "map_samples_per_s": summarize([r["clips"] / r["map_seconds"] for r in results]),
                                    "cache_mb_per_clip": results[0]["cache_mb"] / results[0]["clips"], "runs": results}
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

    report = {"clips": args.clips, "clip_seconds": [2, 8], "batch_size": args.batch_size, "repeats": args.repeats,
              "torch_threads": 1, "unit": "samples per second to padded batches", "throughput": throughput,
              "memory": memory, "bench_seconds": time.perf_counter() - started}
    out = save_results("loader", report)

    print(f"\nloader: {args.clips} clips of 2-8 s (flac), batch {args.batch_size}, torch threads 1, {os.cpu_count()} CPUs, "
          f"{args.repeats} repeats, median (min-max)\n")
    table = []
    for name, r in throughput.items():
        cached = fmt(r["cached_epoch_samples_per_s"]) if "cached_epoch_samples_per_s" in r else "same"
        table.append([name, fmt(r["samples_per_s"]), cached, fmt(r["per_core"]), f"{r['per_core_vs_hf_recipe']:.1f}x"])
    print_table(["pipeline", "samples/s, first epoch", "samples/s, later epochs", "per core (first epoch)", "per core vs recipe"], table)
    print(f"\npeak RSS of one process iterating one epoch (MB); the recipe's Arrow cache is "
          f"{throughput[names[-1]]['cache_mb_per_clip']:.2f} MB per clip on disk\n")
    print_table(["clips", "wdsbr RSS / anonymous", "hf recipe RSS / anonymous", "hf cache on disk (MB)"],
                [[row["clips"], f"{row['self_mb']:.0f} / {row['anonymous_mb']:.0f}",
                  f"{other['self_mb']:.0f} / {other['anonymous_mb']:.0f}", f"{other['cache_mb']:.0f}"]
                 for row, other in zip(memory[0::2], memory[1::2])])
    print(f"\nwrote {out} in {report['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

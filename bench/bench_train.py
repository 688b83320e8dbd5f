"""Benchmark training: `launch/train.py` (DeepSpeed ZeRO-2, streaming shards) against `Seq2SeqTrainer` (the Hugging
Face recipe: DDP over a dataset prepared by `map`), same model, clips, batch, steps, lr, schedule and precision.

    python bench/bench_train.py [--ranks 1 2] [--repeats 3] [--max-steps 14] [--batch-size 4] [--precision fp32]

Candidates, interleaved over --repeats repetitions, each a fresh launch:
  - wdsbr, N ranks     deepspeed --num_gpus N launch/train.py … --precision P --num-workers 1 --log-every 1
                       --eval-every (larger than --max-steps); step times from the wall-clock `time` of its
                       metrics.jsonl train rows (one per step, written after the row's all-reduces: the step's
                       whole cost), the first --warmup-rows steps left out. (Its final evaluation and
                       checkpoint come after the last row: outside the measured window.)
  - hf trainer, N ranks  python bench/hf_train.py (N = 1) or torchrun --nproc_per_node N bench/hf_train.py:
                       Seq2SeqTrainer, DataCollatorSpeechSeq2SeqWithPadding, dataloader_num_workers 1, no
                       evaluation; step times from the wall-clock end times of the same steps (on_step_end).
                       Audio-seconds/s is samples/s times the corpus's mean clip length (the mapped dataset keeps
                       no lengths).
Both sides: a step's time is the difference of consecutive step-end timestamps taken with time.time() in the
rank-0 process, so both windows hold the same work (the step, its bookkeeping, the next batch's wait).
A run's samples/s is the global batch over its median step time (the mean is in the JSON too): on a shared
machine a few steps slowed by other work would otherwise move the mean. CPU seconds per sample (user + system of
the whole launched tree over the same steps, sampled every 0.2 s) is the cost that other load does not inflate.
  - wdsbr loader alone   one worker producing the same batches with no model (the loader's ceiling here).
Both trainers get OMP_NUM_THREADS = --threads-per-rank (1). The model is a tiny random Whisper (d_model 128, 2 + 2
layers, 80 mels, 1500 encoder positions: the real 30 s input), fp32 on CPU by default (our trainer would pick
bf16 for fp16 on CPU; --precision bf16 runs both in bf16, where HF uses autocast and DeepSpeed bf16 weights).
The recipe's `map` runs once, before timing (bench_loader.py times it). Peak memory: the largest process's
ru_maxrss and the summed PSS of the whole launched tree (launcher, ranks, DataLoader workers).
Writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    fmt,
    hf_map,
    hf_raw_dataset,
    print_table,
    run_measured,
    save_results,  # noqa: E402
    shard_folder,
    summarize,
    write_corpus,
)

from wdsbr.data import LoaderOptions, make_train_loader  # noqa: E402
from wdsbr.model import build_tiny_whisper, load_processor  # noqa: E402

BIN = Path(sys.executable).parent


def wdsbr_command(ranks: int, port: int, model: Path, shards: Path, val: Path, out: Path, args) -> list[str]:
    return [
        str(BIN / "deepspeed"),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(port),
        str(ROOT / "launch" / "train.py"),
        "--deepspeed",
        str(ROOT / "configs" / "ds_zero2.json"),
        "--model",
        str(model),
        "--train-shards",
        str(shards),
        "--val-shards",
        str(val),
        "--output-dir",
        str(out),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--warmup-steps",
        str(args.warmup_steps),
        "--max-steps",
        str(args.max_steps),
        "--eval-every",
        str(10 * args.max_steps),
        "--log-every",
        "1",
        "--num-workers",
        "1",
        "--precision",
        args.precision,
        "--generation-max-length",
        "4",
        "--patience",
        "0",
        "--shuffle-buffer",
        "64",
    ]


def hf_command(ranks: int, port: int, model: Path, dataset: Path, out: Path, timings: Path, args) -> list[str]:
    launcher = (
        [str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(port)]
        if ranks > 1
        else [sys.executable]
    )
    return [
        *launcher,
        str(ROOT / "bench" / "hf_train.py"),
        "--model",
        str(model),
        "--dataset",
        str(dataset),
        "--output-dir",
        str(out),
        "--timings",
        str(timings),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--warmup-steps",
        str(args.warmup_steps),
        "--max-steps",
        str(args.max_steps),
        "--num-workers",
        "1",
        "--precision",
        args.precision,
    ]


def wdsbr_rates(out: Path, warmup_rows: int, launched: float, measured) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    kept = train[warmup_rows:]
    cpu = measured.cpu_seconds_between(train[warmup_rows - 1]["time"], train[-1]["time"])
    # step-end timestamps, as the recipe's: row k is written when step k's bookkeeping is done (--log-every 1)
    seconds = [b["time"] - a["time"] for a, b in zip(train[warmup_rows - 1 :], kept)]
    samples = sum(r["samples_per_s"] * r["step_seconds"] for r in kept)  # the samples of each step (its own window)
    audio = sum(r["audio_seconds_per_s"] * r["step_seconds"] for r in kept)
    global_batch = samples / len(kept)
    return {
        "samples_per_s": global_batch / statistics.median(seconds),
        "audio_seconds_per_s": audio / samples * global_batch / statistics.median(seconds),
        "mean_samples_per_s": samples / sum(seconds),
        "steps_measured": len(kept),
        "step_seconds": seconds,
        "cpu_seconds_per_sample": cpu / samples,
        "seconds_to_first_step": train[0]["time"] - launched,
        "seconds_after_last_step": launched + measured.wall_s - train[-1]["time"],
    }


def hf_rates(timings: Path, warmup_rows: int, mean_clip_seconds: float, launched: float, measured) -> dict:
    report = json.loads(timings.read_text())
    times = report["step_end_times"]
    steps = len(times) - warmup_rows  # steps warmup_rows+1 .. last, timed from the end of step warmup_rows
    seconds = [b - a for a, b in zip(times[warmup_rows - 1 :], times[warmup_rows:])]
    rate = report["global_batch_size"] / statistics.median(seconds)
    return {
        "samples_per_s": rate,
        "audio_seconds_per_s": rate * mean_clip_seconds,
        "steps_measured": steps,
        "mean_samples_per_s": steps * report["global_batch_size"] / sum(seconds),
        "step_seconds": seconds,
        "cpu_seconds_per_sample": measured.cpu_seconds_between(times[warmup_rows - 1], times[-1])
        / (steps * report["global_batch_size"]),
        "seconds_to_first_step": times[0] - launched,
        "seconds_after_last_step": launched + measured.wall_s - times[-1],
    }


def loader_alone(shards: Path, processor, batch_size: int, batches: int) -> float:
    tokenizer = processor.tokenizer
    loader = make_train_loader(
        shards,
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=80,
            micro_batch_size=batch_size,
            num_workers=1,
            shuffle_buffer=64,
        ),
    )
    start, samples = time.perf_counter(), 0
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first shuffle-buffer fill, as the trainers' warm-up rows
    start = time.perf_counter()
    for index, batch in enumerate(iterator):
        samples += batch["input_features"].shape[0]
        if index + 2 >= batches:
            break
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved repetitions (a target is met only beyond their spread)"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="micro-batch per rank, both trainers")
    parser.add_argument("--max-steps", type=int, default=14)
    parser.add_argument("--warmup-rows", type=int, default=4, help="first steps left out of the rates")
    parser.add_argument("--warmup-steps", type=int, default=2, help="lr warm-up (both trainers)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--threads-per-rank",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of every rank, both trainers (1: 2 ranks use the 2 cores here; a rank's "
        "DataLoader worker shares them)",
    )
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    if args.warmup_rows < 1 or args.warmup_rows >= args.max_steps:
        parser.error("--warmup-rows must be in [1, --max-steps)")
    torch.set_num_threads(1)
    started = time.perf_counter()
    import datasets

    datasets.disable_progress_bars()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        # Enough clips that no rank reaches the end of an epoch inside the run (a new epoch restarts workers).
        n_clips = args.batch_size * max(args.ranks) * (args.max_steps + 2)
        rows = write_corpus(tmp / "corpus", n_clips, audio_format="flac")
        shards = shard_folder(tmp / "corpus", tmp / "shards", samples_per_shard=max(4, n_clips // 8))
        write_corpus(tmp / "val-corpus", 4, seed=99, audio_format="flac")  # the final evaluation: keep it tiny
        val = shard_folder(tmp / "val-corpus", tmp / "val-shards", samples_per_shard=2)
        model = build_tiny_whisper(
            tmp / "model", [r["text"] for r in rows], d_model=args.d_model, layers=args.layers, heads=4
        )
        processor = load_processor(str(model), language="br")
        mapped = hf_map(hf_raw_dataset(rows, tmp / "hf"), processor)
        mapped.save_to_disk(str(tmp / "hf-mapped"))
        shutil.rmtree(tmp / "hf")
        mean_clip_seconds = statistics.mean(r["seconds"] for r in rows)

        names = [f"{kind}, {n} rank{'s' if n > 1 else ''}" for n in args.ranks for kind in ("wdsbr", "hf trainer")]
        runs: dict[str, list[dict]] = {name: [] for name in names}
        loader_rates: list[float] = []
        port = 29600
        for _ in range(args.repeats):
            for ranks in args.ranks:  # interleaved
                env = {
                    **os.environ,
                    "OMP_NUM_THREADS": str(args.threads_per_rank),
                    "PYTHONWARNINGS": "ignore",
                    "TOKENIZERS_PARALLELISM": "false",
                }
                port += 1
                out = tmp / "run-wdsbr"
                launched = time.time()
                measured = run_measured(wdsbr_command(ranks, port, model, shards, val, out, args), env=env)
                if measured.rc != 0:
                    raise RuntimeError(f"wdsbr training failed:\n{measured.output[-4000:]}")
                runs[f"wdsbr, {ranks} rank{'s' if ranks > 1 else ''}"].append(
                    {
                        **wdsbr_rates(out, args.warmup_rows, launched, measured),
                        "wall_s": measured.wall_s,
                        "max_process_rss_mb": measured.max_process_rss_mb,
                        "peak_tree_pss_mb": measured.peak_tree_pss_mb,
                    }
                )
                shutil.rmtree(out)

                port += 1
                out, timings = tmp / "run-hf", tmp / "hf-timings.json"
                launched = time.time()
                measured = run_measured(hf_command(ranks, port, model, tmp / "hf-mapped", out, timings, args), env=env)
                if measured.rc != 0:
                    raise RuntimeError(f"Seq2SeqTrainer run failed:\n{measured.output[-4000:]}")
                runs[f"hf trainer, {ranks} rank{'s' if ranks > 1 else ''}"].append(
                    {
                        **hf_rates(timings, args.warmup_rows, mean_clip_seconds, launched, measured),
                        "wall_s": measured.wall_s,
                        "max_process_rss_mb": measured.max_process_rss_mb,
                        "peak_tree_pss_mb": measured.peak_tree_pss_mb,
                    }
                )
                shutil.rmtree(out, ignore_errors=True)
            loader_rates.append(loader_alone(shards, processor, args.batch_size, args.max_steps))

    results = {}
    for name, measured_runs in runs.items():
        results[name] = {
            key: summarize([r[key] for r in measured_runs])
            for key in (
                "samples_per_s",
                "audio_seconds_per_s",
                "cpu_seconds_per_sample",
                "wall_s",
                "seconds_to_first_step",
                "seconds_after_last_step",
                "max_process_rss_mb",
                "peak_tree_pss_mb",
            )
        }
        results[name]["runs"] = measured_runs
    for ranks in args.ranks:
        suffix = f"{ranks} rank{'s' if ranks > 1 else ''}"
        ours, theirs = results[f"wdsbr, {suffix}"], results[f"hf trainer, {suffix}"]
        ours["vs_hf_trainer"] = ours["samples_per_s"]["median"] / theirs["samples_per_s"]["median"]
        theirs["vs_hf_trainer"] = 1.0
        # CPU per sample: the cost of a step whatever else runs on the machine (lower is better)
        ours["cpu_vs_hf_trainer"] = (
            theirs["cpu_seconds_per_sample"]["median"] / ours["cpu_seconds_per_sample"]["median"]
        )
        theirs["cpu_vs_hf_trainer"] = 1.0
    loader = summarize(loader_rates)
    one_rank = results[f"wdsbr, {min(args.ranks)} rank{'s' if min(args.ranks) > 1 else ''}"]["samples_per_s"]["median"]
    report = {
        "model": {"d_model": args.d_model, "encoder_layers": args.layers, "decoder_layers": args.layers, "n_mels": 80},
        "batch_size_per_rank": args.batch_size,
        "max_steps": args.max_steps,
        "warmup_rows_excluded": args.warmup_rows,
        "precision": args.precision,
        "threads_per_rank": args.threads_per_rank,
        "lr": args.lr,
        "clips": n_clips,
        "mean_clip_seconds": mean_clip_seconds,
        "repeats": args.repeats,
        "results": results,
        "loader_alone_1_worker_samples_per_s": loader,
        "loader_vs_training_1_rank": loader["median"] / one_rank,
        "bench_seconds": time.perf_counter() - started,
    }
    out = save_results("train", report)

    print(
        f"\ntraining: tiny Whisper d_model {args.d_model}, {args.layers}+{args.layers} layers, batch {args.batch_size} "
        "per rank, "
        f"{args.precision}, {args.max_steps} steps ({args.warmup_rows} left out), {cores} CPUs, {args.repeats} "
        "repeats, median (min-max)\n"
    )
    table = []
    for name, r in results.items():
        table.append(
            [
                name,
                fmt(r["samples_per_s"], 2),
                fmt(r["audio_seconds_per_s"], 1),
                f"{r['vs_hf_trainer']:.2f}x",
                fmt(r["cpu_seconds_per_sample"], 3),
                f"{r['cpu_vs_hf_trainer']:.2f}x",
                f"{r['max_process_rss_mb']['median']:.0f}",
                f"{r['peak_tree_pss_mb']['median']:.0f}",
                f"{r['seconds_to_first_step']['median']:.0f} / {r['seconds_after_last_step']['median']:.0f} / "
                f"{r['wall_s']['median']:.0f}",
            ]
        )
    print_table(
        [
            "trainer",
            "samples/s",
            "audio s/s",
            "vs Seq2SeqTrainer",
            "CPU s per sample",
            "CPU efficiency vs Seq2SeqTrainer",
            "largest process RSS (MB)",
            "tree PSS (MB)",
            "s to 1st step / after last / total",
        ],
        table,
    )
    print(
        f"\nwdsbr loader alone, 1 worker, batch {args.batch_size}: {fmt(loader)} samples/s = "
        f"{report['loader_vs_training_1_rank']:.0f}x what 1 rank of this tiny model trains on this CPU"
    )
    print(f"wrote {out} in {report['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

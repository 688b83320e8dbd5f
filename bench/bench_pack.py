"""Benchmark `--pack`: packed vs unpacked training of the same small Whisper, same data, same seeds.

    python bench/bench_pack.py [--seeds 0 1] [--steps 20] [--factor 6]

For each seed: one packed run of `--steps` optimizer steps, and one unpacked run of `--factor` × `--steps` steps
that evaluates every `--steps` steps. The packed run and the unpacked run's first evaluation cost about the same
wall-clock (the encoder always sees 30 s windows; only the decoder's labels are longer when packed): that is the
equal-budget comparison. The unpacked run's last evaluation has seen about as many utterances as the packed run:
the equal-utterances comparison. Reported: real-speech seconds per second (silence between packed utterances not
counted), the packing factor, validation loss and WER (one utterance per window in validation, so comparable),
median and min-max over seeds. Clips are 2-6 s like Common Voice. Writes bench/results/pack.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, free_port, write_corpus  # noqa: E402

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def train(model: Path, shards: Path, out: Path, seed: int, steps: int, eval_every: int, pack: float) -> dict:
    command = [
        DEEPSPEED,
        "--num_gpus",
        "1",
        "--master_port",
        str(free_port()),
        "launch/train.py",
        "--deepspeed",
        "configs/ds_zero2.json",
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--train-shards",
        str(shards / "train"),
        "--val-shards",
        str(shards / "validation"),
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "5",
        "--max-steps",
        str(steps),
        "--eval-every",
        str(eval_every),
        "--patience",
        "0",
        "--num-workers",
        "1",
        "--log-every",
        "5",
        "--generation-max-length",
        "60",
        "--seed",
        str(seed),
        "--precision",
        "bf16",
        *(["--pack", "--pack-fraction", str(pack)] if pack else []),
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    )
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"][1:]  # the first window includes start-up
    return {
        "wall_seconds": time.perf_counter() - started,
        "speech_seconds_per_s": statistics.median(r["speech_seconds_per_s"] for r in train_rows),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in train_rows),
        "packing_factor": statistics.median(r["packing_factor"] for r in train_rows),
        "evals": [{k: r[k] for k in ("step", "val_loss", "wer", "cer")} for r in rows if r["kind"] == "eval"],
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--factor", type=int, default=6)
    parser.add_argument("--clips", type=int, default=480)
    parser.add_argument("--fraction", type=float, default=0.5, help="The remedy measured beside full packing.")
    args = parser.parse_args()
    from wdsbr.corpus import open_corpus
    from wdsbr.model import build_tiny_whisper
    from wdsbr.shards import ShardOptions, shard_corpus

    runs: dict[str, list[dict]] = {"packed": [], "partly": [], "unpacked": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = [
            row["text"] for row in write_corpus(tmp / "corpus" / "train", args.clips, min_seconds=2, max_seconds=6)
        ]
        write_corpus(tmp / "corpus" / "validation", 24, seed=1, min_seconds=2, max_seconds=6, start=args.clips)
        shard_corpus(open_corpus(tmp / "corpus"), tmp / "shards", ShardOptions(samples_per_shard=60), progress=False)
        model = build_tiny_whisper(tmp / "model", texts, d_model=128, layers=2, vocab_size=600)
        for seed in args.seeds:  # interleaved: drift hits both alike
            runs["packed"].append(
                train(model, tmp / "shards", tmp / f"packed-{seed}", seed, args.steps, args.steps, 1.0)
            )
            runs["partly"].append(
                train(model, tmp / "shards", tmp / f"partly-{seed}", seed, args.steps, args.steps, args.fraction)
            )
            runs["unpacked"].append(
                train(model, tmp / "shards", tmp / f"unpacked-{seed}", seed, args.steps * args.factor, args.steps, 0.0)
            )

    def at(run: dict, step: int) -> dict:
        return next(e for e in run["evals"] if e["step"] == step)

    names = ("unpacked", "partly", "packed")

    def row(get) -> list[list[float]]:
        return [[get(r) for r in runs[name]] for name in names]

    table = {
        "speech s/s": row(lambda r: r["speech_seconds_per_s"]),
        "windows/s": row(lambda r: r["samples_per_s"]),
        "utterances per window": row(lambda r: r["packing_factor"]),
        f"val_loss at equal steps ({args.steps})": row(lambda r: at(r, args.steps)["val_loss"]),
        f"WER at equal steps ({args.steps})": row(lambda r: at(r, args.steps)["wer"]),
        f"val_loss after {args.steps * args.factor} unpacked steps (about the utterances packed saw)": [
            [at(r, args.steps * args.factor)["val_loss"] for r in runs["unpacked"]],
            [],
            [],
        ],
        "wall seconds of the run": row(lambda r: r["wall_seconds"]),
    }
    print(f"pack: {args.clips} clips of 2-6 s, seeds {args.seeds}, batch 4, 1 rank, bf16, tiny Whisper d_model 128")
    print(f"| measure | unpacked | packed {args.fraction:.0%} of windows | packed |")
    print("|---|---:|---:|---:|")
    for name, values in table.items():
        print(f"| {name} | " + " | ".join(spread(v) if v else "" for v in values) + " |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pack.json").write_text(
        json.dumps(
            {
                "bench": "pack",
                "args": vars(args),
                "runs": runs,
                "table": {k: dict(zip(names, v)) for k, v in table.items()},
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS / 'pack.json'}")


if __name__ == "__main__":
    main()

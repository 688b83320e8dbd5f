"""LoRA against full fine-tuning on the real multilingual base, on bench_breton's synthetic Breton corpus: test WER
at equal steps and at equal training time, trainable parameters, training seconds, over seeds.

    python tools/fetch_pretrained.py base ~/.cache/wdsbr/base
    python bench/bench_lora.py --model ~/.cache/wdsbr/base [--seeds 0 1 2] [--rank 32]

Corpus: bench_breton.py's (made once under --cache: 600 training clips of Breton sentences read by Welsh espeak-ng
voices, 40 validation clips, 80 test sentences read by 3 unseen voices). Variants at each seed, 1 rank, global batch
8, bf16: `full` (every weight, lr --lr-full, bench_breton's 1e-4), `lora` (`--lora RANK`, α 2 × rank, q_proj and
v_proj, lr --lr-lora, the peft Whisper example's 1e-3) for the same --max-steps, and `lora_time` (LoRA for as many
steps as fit the full run's training time: --max-steps × full's step time / LoRA's, both measured once, side by side,
by a calibration that trains each for --calibrate-steps at seed 0 and times the steps after the 10th; run it on an
otherwise quiet machine; the lora_time runs themselves only need their WER). Each final
`best/` (the merged model) is scored by launch/evaluate.py on the test clips, fp32, greedy (bench_breton.score).
`full` is bench_breton's 1-rank run at the seed when bench/results/breton.json holds one trained with these settings
(the same command; --no-reuse-breton trains it again). --variants measures a subset. Writes bench/results/lora.json
after every run and resumes from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_breton import SETTINGS, make_corpus, pct, score, spread, train  # noqa: E402
from common import RESULTS, print_table, save_results  # noqa: E402

VARIANTS = ("full", "lora", "lora_time")


def lora_flags(args) -> tuple[str, ...]:
    return ("--lora", str(args.rank), "--lora-alpha", str(2 * args.rank))


def full_from_breton(seed: int, args) -> dict | None:
    """bench_breton's 1-rank run at this seed when it was trained exactly as `full` would be (same corpus sizes,
    batch, steps, lr, warmup, precision, token limit): its row, marked with where it came from; else None."""
    path = RESULTS / "breton.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    ours = {**{name: getattr(args, name, None) for name in SETTINGS}, "lr": args.lr_full}
    if any(report.get(name) != value for name, value in ours.items()):
        return None
    row = next((r for r in report["runs"].get("wdsbr-1", []) if r["seed"] == seed), None)
    if row is None or not (Path(row["model"]) / "config.json").is_file():
        return None
    from transformers import WhisperForConditionalGeneration

    from wdsbr.lora import describe

    counts = describe(WhisperForConditionalGeneration.from_pretrained(row["model"]))  # full FT trains every weight
    return {
        "seed": seed,
        "steps": args.max_steps,
        "lr": args.lr_full,
        **counts,
        **{k: row[k] for k in ("model", "train_seconds", "wall_seconds", "val_wer", "val_loss")},
        "test_wer": row["wer"],
        "voices": row["voices"],
        "from": "bench/results/breton.json (wdsbr-1)",
    }


def calibrate(shards: dict, args) -> dict:
    """Seconds per step of `full` and `lora`, trained one after the other for --calibrate-steps at seed 0: the mean
    over the steps after the 10th (the first ten hold the engine's warm-up), from the runs' metrics rows."""
    timing = {"steps": args.calibrate_steps}
    for variant in ("full", "lora"):
        out = args.cache / "runs" / f"calibrate-{variant}"
        lr = args.lr_lora if variant == "lora" else args.lr_full
        settings = argparse.Namespace(**{**vars(args), "max_steps": args.calibrate_steps, "lr": lr})
        train(1, 0, shards, out, settings, lora_flags(args) if variant == "lora" else ())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steady = [r["step_seconds"] for r in rows if r.get("kind") == "train" and r["step"] > 10]
        timing[variant] = round(sum(steady) / len(steady), 3)
        print(f"calibration: {variant} {timing[variant]:.2f} s a step", flush=True)
    return timing


def run_variant(variant: str, seed: int, shards: dict, args, done: dict, timing: dict | None = None) -> dict:
    out = args.cache / "runs" / f"{variant}-seed{seed}"
    steps = args.max_steps
    if variant == "lora_time":  # as many LoRA steps as full's --max-steps take, at the calibrated step times
        steps = max(1, round(args.max_steps * timing["full"] / timing["lora"]))
    flags = lora_flags(args) if variant.startswith("lora") else ()
    lr = args.lr_lora if variant.startswith("lora") else args.lr_full
    settings = argparse.Namespace(**{**vars(args), "max_steps": steps, "lr": lr})
    trained = train(1, seed, shards, out, settings, flags)
    summary = json.loads((out / "summary.json").read_text())
    scores = score(trained["model"], shards, out / "score", args)
    return {
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "trainable_params": summary.get("trainable_params"),
        "total_params": summary.get("total_params"),
        **trained,
        "test_wer": scores["wer"],
        "voices": scores["voices"],
    }


def make_report(results: dict, args, started: float, timing: dict | None = None) -> dict:
    summary = {
        variant: {
            "test_wer": spread([r["test_wer"] for r in runs]),
            "train_seconds": spread([r["train_seconds"] for r in runs]),
        }
        for variant, runs in results.items()
        if runs
    }
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("cache",)}
    return {
        **settings,
        "calibration": timing,
        "runs": results,
        "summary": summary,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a multilingual Whisper folder (fetch_pretrained)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wdsbr" / "bench-breton")
    parser.add_argument("--sentences", type=Path, default=Path(__file__).parent / "data" / "br_sentences.txt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--train-clips", type=int, default=600)
    parser.add_argument("--val-clips", type=int, default=40)
    parser.add_argument("--test-sentences", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--lr-full", type=float, default=1e-4)
    parser.add_argument("--lr-lora", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--calibrate-steps", type=int, default=20, help="steps of each timing run for lora_time")
    parser.add_argument("--results", default="lora")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="measure only these (lora_time needs both others)",
    )
    parser.add_argument(
        "--no-reuse-breton",
        dest="reuse_breton",
        action="store_false",
        help="train `full` here even when bench_breton's 1-rank run at the seed was trained the same way",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    shards = make_corpus(args.cache, args)
    earlier = RESULTS / f"{args.results}.json"
    report = json.loads(earlier.read_text()) if earlier.is_file() else {}
    results = report.get("runs") or {v: [] for v in VARIANTS}
    timing = report.get("calibration")
    if "lora_time" in args.variants and timing is None:
        timing = calibrate(shards, args)
        save_results(args.results, make_report(results, args, started, timing))
    for seed in args.seeds:
        done = {v: next((r for r in results[v] if r["seed"] == seed), None) for v in VARIANTS}
        for variant in [v for v in VARIANTS if v in args.variants]:
            if done[variant] is None and variant == "full" and args.reuse_breton:
                done[variant] = full_from_breton(seed, args)
                if done[variant] is not None:
                    results[variant].append(done[variant])
            if done[variant] is None:
                done[variant] = run_variant(variant, seed, shards, args, done, timing)
                results[variant].append(done[variant])
                save_results(args.results, make_report(results, args, started, timing))
                print(f"{variant} seed {seed}: test WER {pct(done[variant]['test_wer'])} %", flush=True)
    report = make_report(results, args, started, timing)
    save_results(args.results, report)
    print_table(
        ["variant", "seeds", "test WER", "train s"],
        [
            [v, len(results[v]), pct(s["test_wer"]["mean"]), f"{s['train_seconds']['mean']:.0f}"]
            for v, s in report["summary"].items()
        ],
    )


if __name__ == "__main__":
    main()

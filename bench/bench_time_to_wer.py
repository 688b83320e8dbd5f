"""Time to a target WER on a real Whisper: how long each trainer takes to make a model as good as the Hugging Face
recipe's final one, one run at a time on the same machine. Two tasks (--task):

  tiny-en  the real tiny.en on bench_accuracy.py's English corpus, budget and seeds (1,200 clips, batch 16, 75 steps,
           lr 3.75e-5), scored every 15 steps on its 150 test clips, at most 48 new tokens, the default normaliser
  breton   the real multilingual base on bench_breton.py's Breton corpus and budget (600 clips, batch 8, 80 steps,
           lr 1e-4), `--language br`, scored every 20 steps with the Breton normaliser, at most 96 new tokens, on 80
           of its test clips: each of the 80 unseen test sentences once, read in turn by its three unseen voices
           (bench_breton scores all 240 in 7.7 minutes, fp32, here); wdsbr trains with `--text-normalizer breton`, as
           bench_breton does, the recipe on the sentences as written, as its users do

    python bench/bench_time_to_wer.py --model ~/.cache/wdsbr/tiny.en [--seeds 0 1 2] [--systems hf wdsbr …]
    python bench/bench_time_to_wer.py --task breton --model ~/.cache/wdsbr/base [--seeds 0 1 2] [--systems …]

Systems (each trained for --max-steps at global batch --batch-size, bench_accuracy's lr, warm-up and bf16):
  hf            bench/hf_train.py (datasets.map + Seq2SeqTrainer), its model saved every --eval-every steps, the
                saving left out of its training seconds; every snapshot scored afterwards by launch/evaluate.py
                in bf16 (as DeepSpeed's engine casts it) on the test clips
  wdsbr         launch/train.py, validating on the test clips every --eval-every steps (its own exact validation,
                in the engine's bf16: the code launch/evaluate.py runs), evaluation left out of its training seconds
  wdsbr-pack    the same with --pack
  wdsbr-tspack  the same with --pack --timestamps 0.2 --prev-text 0.2
  wdsbr-pack-lr3  --pack at 3× the lr: a packed update carries ~9× the clips, and √9 = 3 is the square-root rule
Every score: greedy, the task's token limit and normaliser, the same test clips of unseen voices.

Per seed, the target is hf's WER at its last step. A system's time to the target is its training seconds at the
first evaluation whose WER is at or below it (None: not reached within the budget); the speech seen by then
(hours of real speech, packing's silence not counted) and each system's ratio to hf's time are reported beside it.
The training corpus is re-sharded once when its manifest does not list each clip's seconds (packed epochs are
exact only with them). Writes bench/results/time_to_wer.json (breton: time_to_wer_breton.json) after every run and
resumes from it (same settings).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import (  # noqa: E402
    AUGMENT,
    CORES,
    make_corpus,
    rows_of,
    score,
    train_hf,
    train_wdsbr,
)
from bench_breton import SENTENCES, TEST_VOICES  # noqa: E402
from bench_breton import make_corpus as breton_corpus  # noqa: E402
from common import RESULTS, hf_map, hf_raw_dataset, print_table, save_results  # noqa: E402

from wdsbr.corpus import open_corpus  # noqa: E402
from wdsbr.model import load_processor  # noqa: E402
from wdsbr.shards import ShardOptions, shard_corpus  # noqa: E402

SYSTEMS = {
    "hf": None,
    "wdsbr": [],
    "wdsbr-pack": ["--pack"],
    "wdsbr-tspack": AUGMENT["tspack"],
    "wdsbr-pack-lr3": ["--pack"],
}
LR_SCALE = {"wdsbr-pack-lr3": 3.0}  # a system's lr: the task's times this
CACHE = Path.home() / ".cache" / "wdsbr"
# each task's corpus, budget and decoding: argparse's defaults for --model, --cache, the sizes and the schedule
TASKS = {
    "tiny-en": {
        "model": CACHE / "tiny.en",
        "cache": CACHE / "bench-accuracy",
        "train_clips": 1200,
        "test_clips": 150,
        "batch_size": 16,
        "max_steps": 75,
        "lr": 3.75e-5,
        "warmup_steps": 10,
        "eval_every": 15,
        "results": "time_to_wer",
        "language": "en",
        "max_new_tokens": 48,
        "normalizer": None,
    },
    "breton": {
        "model": CACHE / "base",
        "cache": CACHE / "bench-breton",
        "train_clips": 600,
        "test_clips": 80,
        "batch_size": 8,
        "max_steps": 80,
        "lr": 1e-4,
        "warmup_steps": 8,
        "eval_every": 20,
        "results": "time_to_wer_breton",
        "language": "br",
        "max_new_tokens": 96,
        "normalizer": "breton",
    },
}
BRETON_SIZES = {"val_clips": 40, "test_sentences": 80}  # bench_breton's defaults: its corpus, made once, is shared
SETTINGS = ("model", "train_clips", "test_clips", "batch_size", "max_steps", "lr", "warmup_steps", "eval_every")


def with_clips(shards: Path, cache: Path) -> None:
    """Shard the training clips again when the manifest does not list each clip (an older shard_corpus wrote it)."""
    manifest = json.loads((shards.parent / "manifest.json").read_text())
    if all("clips" in shard for shard in manifest["splits"]["train"]["shards"]):
        return
    print(f"{shards.parent}: sharding again, so that the manifest lists each clip's seconds", flush=True)
    shard_corpus(
        open_corpus(cache / "corpus" / "train"),
        shards.parent,
        ShardOptions(val_fraction=0.0, test_fraction=0.0, samples_per_shard=200, workers=CORES),
        overwrite=True,
        progress=False,
    )


def hf_curve(seed: int, shards: dict, dataset: Path, args) -> dict:
    out = args.cache / "runs" / f"ttw-hf-seed{seed}"
    steps = list(range(args.eval_every, args.max_steps + 1, args.eval_every))
    trained = train_hf(
        seed, dataset, out, args, ["--snapshot-steps", ",".join(map(str, steps))], {"--language": args.language}
    )
    mean_clip = args.corpus_seconds / args.train_clips
    curve = []
    for snapshot in trained["snapshots"]:
        scores = task_score(snapshot["model"], shards, Path(snapshot["model"]) / "score", args)
        curve.append(
            {
                "step": snapshot["step"],
                "train_seconds": round(snapshot["train_seconds"], 2),
                "speech_hours": snapshot["step"] * args.batch_size * mean_clip / 3600,
                "wer": scores["wer"],
            }
        )
    return {"seed": seed, "train_seconds": trained["train_seconds"], "curve": curve}


def wdsbr_curve(system: str, seed: int, shards: dict, args) -> dict:
    out = args.cache / "runs" / f"ttw-{system}-seed{seed}"
    overrides = {
        "--val-shards": f"test={shards['test']}",
        "--eval-every": str(args.eval_every),
        "--metric": "wer",
        "--log-every": str(args.eval_every),
        "--language": args.language,
        "--lr": str(args.lr * LR_SCALE.get(system, 1.0)),
    }
    extra = [*SYSTEMS[system], "--generation-max-length", str(args.max_new_tokens)]
    if args.normalizer:
        extra += ["--text-normalizer", args.normalizer]
    trained = train_wdsbr(1, seed, shards, out, args, extra, overrides)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = speech = 0.0
    done, curve = 0, []
    for row in rows:
        if row["kind"] == "train":  # one row per --eval-every steps: its mean step time over them
            elapsed = row["step_seconds"] * (row["step"] - done)
            seconds, speech, done = seconds + elapsed, speech + row["speech_seconds_per_s"] * elapsed, row["step"]
        elif row["kind"] == "eval":
            curve.append(
                {
                    "step": row["step"],
                    "train_seconds": round(seconds, 2),
                    "speech_hours": speech / 3600,
                    "wer": row["wer"],
                }
            )
    return {"seed": seed, "train_seconds": trained["train_seconds"], "curve": curve}


def task_score(model: str, shards: dict, out: Path, args) -> dict:
    """launch/evaluate.py on the test clips in bf16 (as DeepSpeed's engine casts the model), the task's decoding."""
    extra = ["--text-normalizer", args.normalizer] if args.normalizer else []
    return score(model, shards, out, "bf16", args.language, args.max_new_tokens, extra)


def task_corpus(args) -> dict:
    """The task's shard folders {train, validation, test}, made once under --cache."""
    if args.task == "tiny-en":
        return make_corpus(args.cache, args.train_clips, args.test_clips)
    sizes = argparse.Namespace(train_clips=args.train_clips, sentences=SENTENCES, **BRETON_SIZES)
    shards = breton_corpus(args.cache, sizes)
    return {**shards, "test": breton_test(args.cache, args.test_clips)}


def breton_test(cache: Path, clips: int) -> Path:
    """bench_breton's test clips cut to `clips`: sentence i read by its (i mod 3)-th test voice, sharded once."""
    if not 0 < clips <= BRETON_SIZES["test_sentences"]:
        raise SystemExit(f"--test-clips {clips}: the Breton test has {BRETON_SIZES['test_sentences']} sentences")
    out = cache / f"shards-ttw-test{clips}"
    if (out / "manifest.json").is_file():
        return out / "train"
    folder = cache / f"corpus-ttw-test{clips}"
    shutil.rmtree(folder, ignore_errors=True)
    for index in range(clips):
        voice = TEST_VOICES[index % len(TEST_VOICES)].replace("+", "_")
        (folder / voice).mkdir(parents=True, exist_ok=True)
        for suffix in (".wav", ".txt"):
            name = f"test{index:05d}{suffix}"
            shutil.copyfile(cache / "corpus" / "test" / voice / name, folder / voice / name)
    shard_corpus(
        open_corpus(folder),
        out,
        ShardOptions(val_fraction=0.0, test_fraction=0.0, samples_per_shard=200, workers=CORES),
        progress=False,
    )
    return out / "train"


def reached(curve: list[dict], target: float) -> dict | None:
    return next((point for point in curve if point["wer"] <= target + 1e-12), None)


def make_report(results: dict, args, started: float) -> dict:
    targets = {row["seed"]: row["curve"][-1]["wer"] for row in results.get("hf", [])}
    summary = {}
    for system, rows in results.items():
        for row in rows:
            target = targets.get(row["seed"])
            hit = reached(row["curve"], target) if target is not None else None
            hf_hit = (
                reached(next(r for r in results["hf"] if r["seed"] == row["seed"])["curve"], target) if hit else None
            )
            row["target_wer"] = target
            row["to_target"] = hit
            row["ratio_to_hf"] = hit["train_seconds"] / hf_hit["train_seconds"] if hit and hf_hit else None
        ratios = [row["ratio_to_hf"] for row in rows if row["ratio_to_hf"] is not None]
        summary[system] = {
            "seeds": len(rows),
            "reached": sum(row["to_target"] is not None for row in rows),
            "final_wer": spread([row["curve"][-1]["wer"] for row in rows]),
            "ratio_to_hf": spread(ratios) if ratios else None,
        }
    settings = {name: str(getattr(args, name)) if name == "model" else getattr(args, name) for name in SETTINGS}
    return {**settings, "runs": results, "summary": summary, "bench_seconds": round(time.perf_counter() - started, 1)}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "values": values}


def earlier(args) -> dict:
    path = RESULTS / f"{args.results}.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    mine = {name: str(getattr(args, name)) if name == "model" else getattr(args, name) for name in SETTINGS}
    changed = [name for name in SETTINGS if report.get(name) != mine[name]]
    if changed:
        raise SystemExit(f"{path}: measured with other settings ({', '.join(changed)}); move it away to start again")
    return report["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=list(TASKS), default="tiny-en", help="corpus, budget and decoding (above)")
    parser.add_argument("--model", type=Path, help="the real Whisper (default: the task's, under ~/.cache/wdsbr)")
    parser.add_argument("--cache", type=Path, help="corpus, shards and runs (default: the task's bench cache)")
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-clips", type=int)
    parser.add_argument("--test-clips", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--eval-every", type=int, help="steps between scores (divides --max-steps)")
    parser.add_argument("--results", help="bench/results/RESULTS.json")
    args = parser.parse_args()
    for name, value in TASKS[args.task].items():  # what was not given: the task's
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    args.precision = "bf16"
    if args.max_steps % args.eval_every:
        raise SystemExit(f"--eval-every {args.eval_every} does not divide --max-steps {args.max_steps}")
    if "hf" not in args.systems and not earlier(args):
        raise SystemExit("--systems: hf sets the target; measure it first")
    started = time.perf_counter()
    shards = task_corpus(args)
    with_clips(shards["train"], args.cache)
    args.corpus_seconds = json.loads((shards["train"].parent / "manifest.json").read_text())["splits"]["train"][
        "seconds"
    ]
    dataset = args.cache / "hf-mapped"
    if "hf" in args.systems and not dataset.is_dir():  # the blog's map, once
        processor = load_processor(str(args.model), language=args.language)
        hf_map(hf_raw_dataset(rows_of(args.cache / "corpus"), args.cache / "hf-raw"), processor).save_to_disk(
            str(dataset)
        )
    results = earlier(args)
    (args.cache / "runs").mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for system in args.systems:  # hf first: it sets the seed's target
            if any(row["seed"] == seed for row in results.get(system, [])):
                continue
            row = hf_curve(seed, shards, dataset, args) if system == "hf" else wdsbr_curve(system, seed, shards, args)
            results.setdefault(system, []).append(row)
            report = make_report(results, args, started)
            save_results(args.results, report)
            print(
                f"{system} seed {seed}: " + ", ".join(f"{p['step']}: {p['wer']:.4f}" for p in row["curve"]), flush=True
            )
    report = make_report(results, args, started)
    save_results(args.results, report)
    print_table(
        ["system", "seed", "final WER", "target", "to target (s)", "speech h", "× hf"],
        [
            [
                system,
                row["seed"],
                f"{100 * row['curve'][-1]['wer']:.2f}",
                f"{100 * row['target_wer']:.2f}" if row["target_wer"] is not None else "-",
                f"{row['to_target']['train_seconds']:.0f}" if row["to_target"] else "not reached",
                f"{row['to_target']['speech_hours']:.2f}" if row["to_target"] else "-",
                f"{row['ratio_to_hf']:.2f}" if row["ratio_to_hf"] is not None else "-",
            ]
            for system, rows in report["runs"].items()
            for row in rows
        ],
    )


if __name__ == "__main__":
    main()

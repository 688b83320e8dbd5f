"""Accuracy on a real pretrained Whisper: wdsbr fine-tuning against the Hugging Face recipe, same corpus, budget,
schedule and seeds, every final model scored by one scorer on voices never heard in training.

    python tools/fetch_pretrained.py tiny.en ~/.cache/wdsbr/tiny.en   # OpenAI's tiny.en (hub, else rebuilt offline)
    python bench/bench_accuracy.py --model ~/.cache/wdsbr/tiny.en [--seeds 0 1 2] [--candidates hf wdsbr-1 wdsbr-2]
    make bench-accuracy                                               # the same, with the defaults below

Corpus (cached under --cache, made once): English espeak-ng speech, as tools/make_sample_corpus.py makes the
Breton sample (espeak-ng, then sox to 16 kHz mono), reading sentences drawn from a fixed grammar (subject, verb,
object, place or time). Training voices and test voices are disjoint: other espeak-ng accents and other voice
variants; every clip gets its own speed and pitch. --train-clips for training, 16 more from the training
voices for wdsbr's one validation, --test-clips for the score. Sharded by the project's own writer (flac).

Candidates, interleaved seed by seed (seed 0: every candidate, then seed 1, …):
  zero-shot  the model as given (once)
  hf         bench/hf_train.py: `datasets.map` as in the blog, then `Seq2SeqTrainer` (1 process), final model
  wdsbr-N    deepspeed --num_gpus N launch/train.py, micro-batch = global batch / N, one evaluation at the last
             step (validation loss on the 16 clips), whose model is best/: the final model, as the recipe's
  wdsbr-N-spec, wdsbr-N-speed, wdsbr-N-aug   the same with --spec-augment, --speed-perturb 0.9,1.0,1.1, or both
  wdsbr-N-ts, wdsbr-N-tspack   with --timestamps 0.2 --prev-text 0.2 (and --pack): score them long-form with
             bench/bench_longform.py --models …/runs/wdsbr-1-ts-seed0/best …
Augmentation at a multi-epoch budget: a small corpus seen several times, its own cache and results,
    python bench/bench_accuracy.py --train-clips 200 --max-steps 50 --cache ~/.cache/wdsbr/bench-augment \
        --results accuracy-augment --candidates hf wdsbr-1 wdsbr-1-aug       # 50 × 16 / 200 = 4 epochs
Both trainers: global batch --batch-size, --max-steps, --lr with --warmup-steps of linear warm-up then linear
decay, AdamW (0.9, 0.999, 1e-8, no weight decay), clipping 1.0, --precision (bf16: DeepSpeed keeps bf16
weights, HF autocasts from fp32 ones), --seed, 1 DataLoader worker, OMP_NUM_THREADS = cores / ranks.
Score: launch/evaluate.py on the test shards, greedy (at most 48 new tokens), fp32, the `default` normaliser, for
every final model.
Training samples/s: steps × global batch / training seconds (wdsbr: summary.json's train_seconds, which leave out
evaluation and checkpoints; hf: the trainer's train_runtime). Writes bench/results/RESULTS.json (--results,
default accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, evaluate_json, hf_map, hf_raw_dataset, print_table, save_results  # noqa: E402

from wdsbr.corpus import open_corpus  # noqa: E402
from wdsbr.model import load_processor  # noqa: E402
from wdsbr.shards import ShardOptions, shard_corpus  # noqa: E402

BIN = Path(sys.executable).parent
CORES = len(os.sched_getaffinity(0))

# voice (accent + variant), one list per side: no accent and no variant in both
TRAIN_VOICES = ["en-us+m1", "en-us+f1", "en-gb+m3", "en-gb+f2", "en-gb-x-rp+m2", "en-gb-x-rp+f3"]
TEST_VOICES = ["en-gb-scotland+m7", "en-029+f4", "en-gb-x-gbcwmd+m5"]

SUBJECTS = [
    "the old man",
    "my sister",
    "a small dog",
    "the teacher",
    "our neighbours",
    "the children",
    "a tall woman",
    "his brother",
    "the farmer",
    "every student",
    "the doctor",
    "her friend",
    "the driver",
    "a young boy",
    "the baker",
    "my father",
    "the captain",
    "two girls",
    "the cook",
    "a quiet nurse",
]
VERBS = [
    "found",
    "painted",
    "carried",
    "opened",
    "cleaned",
    "bought",
    "sold",
    "watched",
    "followed",
    "repaired",
    "forgot",
    "washed",
    "dropped",
    "lifted",
    "closed",
    "hid",
    "counted",
    "needed",
    "wanted",
    "moved",
]
OBJECTS = [
    "a red box",
    "the heavy door",
    "three green apples",
    "the broken clock",
    "an empty bottle",
    "the wooden chair",
    "a long letter",
    "the blue car",
    "some fresh bread",
    "the yellow kite",
    "a warm coat",
    "the silver key",
    "five small stones",
    "the kitchen window",
    "a paper boat",
    "the garden gate",
    "an old map",
    "the black bag",
    "two white cups",
    "the last train",
]
TAILS = [
    "this morning",
    "before dinner",
    "near the river",
    "in the garden",
    "after the storm",
    "at the market",
    "on monday",
    "yesterday",
    "last winter",
    "behind the house",
    "at noon",
    "in the rain",
    "by the school",
    "every evening",
    "on the hill",
    "under the bridge",
]


# ---------------------------------------------------------------------------------------------- corpus


def sentences(count: int, seed: int) -> list[str]:
    """`count` distinct sentences of the grammar, in a seeded order."""
    rng = random.Random(seed)
    chosen: dict[str, None] = {}
    while len(chosen) < count:
        chosen[f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"] = None
    return list(chosen)


def speak(job: tuple[Path, str, str, int, int]) -> None:
    path, voice, text, speed, pitch = job
    raw = path.with_suffix(".raw.wav")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "sox",
            "-R",
            "-V1",
            str(raw),
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "silence",
            "1",
            "0.05",
            "0.5%",
            "reverse",
            "silence",
            "1",
            "0.05",
            "0.5%",
            "reverse",
            "gain",
            "-n",
            "-3",
        ],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    path.with_suffix(".txt").write_text(text, encoding="utf-8")


def make_corpus(folder: Path, train_clips: int, test_clips: int, val_clips: int = 16) -> dict[str, Path]:
    """folder/corpus/{train,validation,test}/VOICE/ID.wav + ID.txt, each split sharded on its own (every clip stays
    in its split) into folder/shards-SPLIT/ with its manifest.json; returns {split: its shard folder}."""
    splits = {split: folder / f"shards-{split}" / "train" for split in ("train", "validation", "test")}
    sizes = {"train_clips": train_clips, "test_clips": test_clips, "val_clips": val_clips}
    made = folder / "corpus.json"
    if all((path.parent / "manifest.json").is_file() for path in splits.values()):
        if not made.is_file():  # made before corpus.json was written: its sizes are in the manifests
            made.write_text(
                json.dumps(
                    {
                        "train_clips": manifest_samples(splits["train"]),
                        "test_clips": manifest_samples(splits["test"]),
                        "val_clips": manifest_samples(splits["validation"]),
                    }
                )
            )
        if json.loads(made.read_text()) == sizes:
            return splits
        raise SystemExit(f"{folder}: holds a corpus of other sizes ({made.read_text()}); pass another --cache")
    shutil.rmtree(folder, ignore_errors=True)
    texts = sentences(train_clips + val_clips + test_clips, seed=1234)
    rng = random.Random(99)
    jobs = []
    for split, voices, chunk in (
        ("train", TRAIN_VOICES, texts[:train_clips]),
        ("validation", TRAIN_VOICES, texts[train_clips : train_clips + val_clips]),
        ("test", TEST_VOICES, texts[train_clips + val_clips :]),
    ):
        for index, text in enumerate(chunk):
            voice = voices[index % len(voices)]
            path = folder / "corpus" / split / voice.replace("+", "_") / f"{split}{index:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((path, voice, text, rng.randint(130, 185), rng.randint(30, 70)))
    speak_and_shard(speak, jobs, folder, splits)
    made.write_text(json.dumps(sizes))
    return splits


def speak_and_shard(speak, jobs: list[tuple], folder: Path, splits: dict[str, Path]) -> None:
    """`speak` every job on all cores, then shard each split's clips (folder/corpus/SPLIT) on their own, every
    clip kept in its split, into `splits[SPLIT]`'s parent."""
    with ThreadPoolExecutor(max_workers=CORES) as pool:
        list(pool.map(speak, jobs))
    for split, path in splits.items():
        shard_corpus(
            open_corpus(folder / "corpus" / split),
            path.parent,
            ShardOptions(val_fraction=0.0, test_fraction=0.0, samples_per_shard=200, workers=CORES),
            progress=False,
        )


def manifest_samples(shards: Path) -> int:
    return json.loads((shards.parent / "manifest.json").read_text())["splits"]["train"]["samples"]


def rows_of(corpus: Path) -> list[dict]:
    """The training clips as the recipe's raw dataset rows (audio path + sentence)."""
    return [
        {"audio": str(wav), "text": wav.with_suffix(".txt").read_text(encoding="utf-8")}
        for wav in sorted((corpus / "train").rglob("*.wav"))
    ]


# ------------------------------------------------------------------------------------------ candidates


def env(ranks: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // ranks)), "TOKENIZERS_PARALLELISM": "false"}


def run(command: list[str], ranks: int, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=ROOT, env=env(ranks), stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - start


AUGMENT = {
    "spec": ["--spec-augment"],
    "speed": ["--speed-perturb", "0.9,1.0,1.1"],
    "aug": ["--spec-augment", "--speed-perturb", "0.9,1.0,1.1"],
    # Whisper's long-form training format, as distil-whisper, without and with packing
    "ts": ["--timestamps", "0.2", "--prev-text", "0.2"],
    "tspack": ["--timestamps", "0.2", "--prev-text", "0.2", "--pack"],
}


def parse_candidate(name: str) -> tuple[int, list[str]]:
    """ "wdsbr-2-aug" → (2 ranks, its augmentation flags)."""
    parts = name.split("-")
    if (
        len(parts) not in (2, 3)
        or parts[0] != "wdsbr"
        or not parts[1].isdigit()
        or (len(parts) == 3 and parts[2] not in AUGMENT)
    ):
        raise SystemExit(f"--candidates: {name!r} is not zero-shot, hf or wdsbr-N[-{'|-'.join(AUGMENT)}]")
    return int(parts[1]), AUGMENT[parts[2]] if len(parts) == 3 else []


def train_wdsbr(
    ranks: int,
    seed: int,
    shards: dict[str, Path],
    out: Path,
    args,
    extra: Sequence[str] = (),
    overrides: dict[str, str] | None = None,
) -> dict:
    """launch/train.py under deepspeed with the bench's settings, `extra` flags added and `overrides` ({flag: value})
    replacing the value a flag below has (bench_time_to_wer: the test set as validation, every few steps)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        str(BIN / "deepspeed"),
        "--log_level",
        "warning",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(29600 + seed),
        str(ROOT / "launch" / "train.py"),
        "--deepspeed",
        str(ROOT / "configs" / "ds_zero2.json"),
        "--model",
        str(args.model),
        "--train-shards",
        str(shards["train"]),
        "--val-shards",
        str(shards["validation"]),
        "--output-dir",
        str(out),
        "--batch-size",
        str(args.batch_size // ranks),
        "--lr",
        str(args.lr),
        "--warmup-steps",
        str(args.warmup_steps),
        "--max-steps",
        str(args.max_steps),
        "--eval-every",
        str(args.max_steps),
        "--metric",
        "loss",
        "--patience",
        "0",
        "--num-workers",
        "1",
        "--log-every",
        "5",
        "--seed",
        str(seed),
        "--precision",
        args.precision,
        "--language",
        "en",
        "--keep-checkpoints",
        "1",
        *extra,
    ]
    for flag, value in (overrides or {}).items():
        command[command.index(flag) + 1] = value
    wall = run(command, ranks, out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    return {"model": str(out / "best"), "train_seconds": summary["train_seconds"], "wall_seconds": wall}


def train_hf(
    seed: int,
    dataset: Path,
    out: Path,
    args,
    extra: Sequence[str] = (),
    overrides: dict[str, str] | None = None,
) -> dict:
    """bench/hf_train.py with the bench's settings, `extra` flags added and `overrides` as in train_wdsbr."""
    shutil.rmtree(out, ignore_errors=True)
    timings = out.with_suffix(".timings.json")
    command = [
        sys.executable,
        str(ROOT / "bench" / "hf_train.py"),
        "--model",
        str(args.model),
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
        "--seed",
        str(seed),
        "--save-model",
        str(out / "final"),
        "--language",
        "en",
        *extra,
    ]
    for flag, value in (overrides or {}).items():
        command[command.index(flag) + 1] = value
    wall = run(command, 1, out.with_suffix(".log"))
    report = json.loads(timings.read_text())
    return {
        "model": str(out / "final"),
        "train_seconds": report["train_runtime"],
        "wall_seconds": wall,
        "snapshots": report.get("snapshots", []),
    }


def score(
    model: str,
    shards: dict[str, Path],
    out: Path,
    precision: str = "fp32",
    language: str = "en",
    max_new_tokens: int = 48,  # ~15-token sentences: a looping decode stops at 48
    extra: Sequence[str] = (),
) -> dict:
    """launch/evaluate.py on shards["test"], greedy, batch 16: its JSON row (bench_time_to_wer: other languages)."""
    out.mkdir(parents=True, exist_ok=True)
    return evaluate_json(
        model,
        shards["test"],
        "--output",
        str(out / "scores.tsv"),
        "--language",
        language,
        "--precision",
        precision,
        "--batch-size",
        "16",
        "--generation-max-length",
        str(max_new_tokens),
        *extra,
        threads=CORES,
        log=out / "evaluate.log",
    )


# ------------------------------------------------------------------------------------------------ main


def make_report(results: dict[str, list[dict]], args: argparse.Namespace, started: float) -> dict:
    """Every run, and per candidate the mean and min–max of WER and training samples/s."""

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "values": values}

    summary = {
        name: {
            "wer": spread([r["wer"] for r in rows]),
            **({"samples_per_s": spread([r["samples_per_s"] for r in rows])} if name != "zero-shot" else {}),
        }
        for name, rows in results.items()
    }
    seeds = sorted({row["seed"] for rows in results.values() for row in rows if row["seed"] is not None})
    return {
        "model": str(args.model),
        "train_clips": args.train_clips,
        "test_clips": args.test_clips,
        "train_voices": TRAIN_VOICES,
        "test_voices": TEST_VOICES,
        "batch_size": args.batch_size,
        "max_steps": args.max_steps,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "precision": args.precision,
        "seeds": seeds,
        "runs": results,
        "summary": summary,
        "bench_seconds": time.perf_counter() - started,
    }


SETTINGS = ("model", "train_clips", "test_clips", "batch_size", "max_steps", "lr", "warmup_steps", "precision")


def earlier_runs(args: argparse.Namespace) -> dict[str, list[dict]]:
    """--append: the runs of an earlier accuracy.json, refused if it was measured with other settings."""
    path = RESULTS / f"{args.results}.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    changed = [
        name for name in SETTINGS if report.get(name) != (str(args.model) if name == "model" else getattr(args, name))
    ]
    if changed:
        raise SystemExit(f"{path}: measured with other settings ({', '.join(changed)}); drop --append or move it away")
    return report["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=Path.home() / ".cache" / "wdsbr" / "tiny.en",
        help="a pretrained Whisper folder or hub id (English-only or multilingual)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "wdsbr" / "bench-accuracy",
        help="corpus, shards and runs (kept: the corpus is made once)",
    )
    parser.add_argument("--candidates", nargs="+", default=["hf", "wdsbr-1", "wdsbr-2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-clips", type=int, default=1200)
    parser.add_argument("--test-clips", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (per step), both trainers")
    parser.add_argument("--max-steps", type=int, default=75)
    parser.add_argument("--lr", type=float, default=3.75e-5)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--results", default="accuracy", help="bench/results/RESULTS.json")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the runs of bench/results/RESULTS.json (same settings) and add these seeds/candidates",
    )
    args = parser.parse_args()
    for candidate in args.candidates:
        if candidate not in ("hf", "zero-shot"):
            parse_candidate(candidate)
    started = time.perf_counter()
    if not Path(args.model).exists() and "/" not in str(args.model):
        raise SystemExit(
            f"{args.model}: no such model folder; make it with python tools/fetch_pretrained.py tiny.en {args.model}"
        )

    shards = make_corpus(args.cache, args.train_clips, args.test_clips)
    dataset = args.cache / "hf-mapped"
    if "hf" in args.candidates and not dataset.is_dir():  # the blog's map, once (bench_loader.py times it)
        import datasets

        datasets.disable_progress_bars()
        processor = load_processor(str(args.model), language="en")
        hf_map(hf_raw_dataset(rows_of(args.cache / "corpus"), args.cache / "hf-raw"), processor).save_to_disk(
            str(dataset)
        )

    results = earlier_runs(args) if args.append else {}
    if "zero-shot" not in results:
        results["zero-shot"] = [{"seed": None, **score(str(args.model), shards, args.cache / "runs" / "zero-shot")}]
    print(f"zero-shot: WER {results['zero-shot'][0]['wer']:.4f}", flush=True)
    for seed in args.seeds:
        for candidate in args.candidates:
            if any(row["seed"] == seed for row in results.get(candidate, [])):
                continue  # --append: measured already
            out = args.cache / "runs" / f"{candidate}-seed{seed}"
            if candidate == "hf":
                trained = train_hf(seed, dataset, out, args)
            else:
                ranks, flags = parse_candidate(candidate)
                trained = train_wdsbr(ranks, seed, shards, out, args, flags)
            scores = score(trained["model"], shards, out / "score")
            row = {
                "seed": seed,
                **trained,
                "samples_per_s": args.max_steps * args.batch_size / trained["train_seconds"],
                **{k: scores[k] for k in ("wer", "cer", "samples")},
            }
            results.setdefault(candidate, []).append(row)
            print(
                f"{candidate} seed {seed}: WER {row['wer']:.4f}, {row['samples_per_s']:.2f} samples/s "
                f"({row['train_seconds']:.0f} s training)",
                flush=True,
            )
            report = make_report(results, args, started)
            save_results(args.results, report)  # after every run: an interrupted bench keeps what it measured
    report = make_report(results, args, started)
    out = save_results(args.results, report)
    summary = report["summary"]
    reference = summary.get("hf", {}).get("samples_per_s", {}).get("mean")
    print(
        f"\naccuracy: {Path(args.model).name}, {args.train_clips} training clips, global batch {args.batch_size}, "
        f"{args.max_steps} steps, lr {args.lr}, {args.precision}, seeds {report['seeds']}; test: {args.test_clips} "
        "clips "
        f"of unseen voices\n"
    )
    table = []
    for name, s in summary.items():
        rate = s.get("samples_per_s")
        table.append(
            [
                name,
                f"{100 * s['wer']['mean']:.2f} % ({100 * s['wer']['min']:.2f}–{100 * s['wer']['max']:.2f})",
                f"{rate['mean']:.2f} ({rate['min']:.2f}–{rate['max']:.2f})" if rate else "",
                f"{rate['mean'] / reference:.2f}×" if rate and reference else "",
            ]
        )
    print_table(["run", "test WER, mean (min–max)", "training samples/s", "vs recipe"], table)
    print(f"\nwrote {out} in {report['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

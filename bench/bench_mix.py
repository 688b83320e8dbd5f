"""Two corpora in one run on a real multilingual Whisper: plain concatenation against upsampling the small one
(`--train-shards NAME=SPEC@FACTOR`), scored per source, over seeds.

    python tools/fetch_pretrained.py base ~/.cache/wdsbr/base
    python bench/bench_mix.py --model ~/.cache/wdsbr/base [--seeds 0 1 2] [--variants concat upsample]

Corpus (made once under --cache): real Breton sentences (bench/data/br_sentences.txt, as bench/bench_breton.py)
read by espeak-ng as two sources that differ in voice family and in size: `welsh`, --big-clips clips read by
four Welsh voice variants, and `french`, --big-clips / 4 clips read by two French voice variants, each source on
its own training sentences. Validation: a set per source (training voices, sentences never trained on), scored
on its own by the trainer (wer/welsh, wer/french). Test: --test-sentences sentences never trained on, read by a
Welsh and a French voice training never hears (cy+m7, fr-fr+m2).

Variants, each at every seed: `concat` (both sources at factor 1: the small one is a fifth of what training
sees) and `upsample` (french@4: both sources seen as often). Same steps, global batch, learning rate and
schedule; one evaluation at the last step (validation loss: best/ is the final model). Each final model is
scored by launch/evaluate.py on the test clips in fp32, greedy, per test voice. Writes bench/results/mix.json
after every run and resumes from it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import BIN, run, speak_and_shard  # noqa: E402
from bench_breton import SENTENCES, pct, score, speak, split_sentences, spread  # noqa: E402
from common import RESULTS, ROOT, print_table, save_results  # noqa: E402

VOICES = {"welsh": ["cy+m1", "cy+f1", "cy+m3", "cy+f2"], "french": ["fr-fr+m1", "fr-fr+f1"]}
TEST_VOICES = {"welsh": "cy+m7", "french": "fr-fr+m2"}
VARIANTS = {"concat": {"welsh": 1, "french": 1}, "upsample": {"welsh": 1, "french": 4}}
SETTINGS = (
    "big_clips",
    "val_clips",
    "test_sentences",
    "batch_size",
    "max_steps",
    "lr",
    "warmup_steps",
    "precision",
    "max_new_tokens",
)


def make_corpus(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """folder/corpus/SPLIT/VOICE/ID.wav + ID.txt for the splits welsh, french (training), val-welsh, val-french
    and test, each sharded on its own; returns {split: its shard folder}. Made once."""
    names = ["welsh", "french", "val-welsh", "val-french", "test"]
    splits = {name: folder / f"shards-{name}" / "train" for name in names}
    sizes = {key: getattr(args, key) for key in ("big_clips", "val_clips", "test_sentences")}
    made = folder / "corpus.json"
    if made.is_file():
        if json.loads(made.read_text()) == sizes:
            return splits
        raise SystemExit(f"{folder}: holds a corpus of other sizes ({made.read_text()}); pass another --cache")
    shutil.rmtree(folder, ignore_errors=True)
    sentences = split_sentences(args.sentences, args.test_sentences, 2 * args.val_clips)
    train, validation = sentences["train"], sentences["validation"]
    own = {"welsh": train[: len(train) * 4 // 5], "french": train[len(train) * 4 // 5 :]}  # no sentence shared
    clips = {"welsh": args.big_clips, "french": args.big_clips // 4}
    rng, jobs = random.Random(7), []

    def add(split: str, voice: str, index: int, text: str) -> None:
        path = folder / "corpus" / split / voice.replace("+", "_") / f"{split}{index:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((path, voice, text, rng.randint(130, 170), rng.randint(30, 70)))

    for source, voices in VOICES.items():
        for index in range(clips[source]):
            add(source, voices[index % len(voices)], index, own[source][index % len(own[source])])
        half = validation[: args.val_clips] if source == "welsh" else validation[args.val_clips :]
        for index, text in enumerate(half):
            add(f"val-{source}", voices[index % len(voices)], index, text)
    for voice in TEST_VOICES.values():
        for index, text in enumerate(sentences["test"]):
            add("test", voice, index, text)
    speak_and_shard(speak, jobs, folder, splits)
    made.write_text(json.dumps(sizes))
    return splits


def train(variant: str, seed: int, shards: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = [f"--train-shards={name}={shards[name]}@{factor}" for name, factor in VARIANTS[variant].items()]
    val_sets = [f"--val-shards={name}={shards[f'val-{name}']}" for name in VOICES]
    command = [
        str(BIN / "deepspeed"), "--log_level", "warning", "--num_gpus", "1", "--master_port", str(29750 + seed),
        str(ROOT / "launch" / "train.py"), "--deepspeed", str(ROOT / "configs" / "ds_zero2.json"),
        "--model", str(args.model), "--language", "br", "--text-normalizer", "breton", *sources, *val_sets,
        "--output-dir", str(out), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--warmup-steps", str(args.warmup_steps), "--max-steps", str(args.max_steps),
        "--eval-every", str(args.max_steps), "--metric", "loss", "--patience", "0", "--num-workers", "1",
        "--log-every", "10", "--seed", str(seed), "--precision", args.precision,
        "--generation-max-length", str(args.max_new_tokens), "--keep-checkpoints", "1",
    ]  # fmt: skip
    wall = run(command, 1, out.with_suffix(".log"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluation = [row for row in rows if row["kind"] == "eval"][-1]
    shown = [row for row in rows if row["kind"] == "train"][-1]["source_samples"]
    return {
        "model": str(out / "best"),
        "train_seconds": json.loads((out / "summary.json").read_text())["train_seconds"],
        "wall_seconds": wall,
        "source_samples": shown,
        "val": {name: evaluation[f"wer/{name}"] for name in VOICES},
    }


def earlier_runs(args: argparse.Namespace) -> dict[str, list[dict]]:
    path = RESULTS / f"{args.results}.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    changed = [name for name in SETTINGS if report.get(name) != getattr(args, name)]
    if changed:
        raise SystemExit(f"{path}: measured with other settings ({', '.join(changed)}); pass another --results")
    return report["runs"]


def make_report(results: dict[str, list[dict]], args: argparse.Namespace, started: float) -> dict:
    summary = {
        variant: {
            "test": {source: spread([r["test"][source] for r in rows]) for source in TEST_VOICES},
            "val": {source: spread([r["val"][source] for r in rows]) for source in VOICES},
            "test_wer": spread([r["test_wer"] for r in rows]),
        }
        for variant, rows in results.items()
        if rows
    }
    return {
        **{key: getattr(args, key) for key in SETTINGS},
        "model": str(args.model),
        "voices": VOICES,
        "test_voices": TEST_VOICES,
        "variants": VARIANTS,
        "runs": results,
        "summary": summary,
        "bench_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a multilingual Whisper folder (fetch_pretrained)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wdsbr" / "bench-mix")
    parser.add_argument("--sentences", type=Path, default=SENTENCES, help="one Breton sentence a line")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--big-clips", type=int, default=400, help="clips of the big source; the small one: / 4")
    parser.add_argument("--val-clips", type=int, default=30, help="per validation set")
    parser.add_argument("--test-sentences", type=int, default=60, help="each read by both test voices")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=6)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--results", default="mix", help="bench/results/RESULTS.json")
    args = parser.parse_args()
    started = time.perf_counter()
    shards = make_corpus(args.cache / "corpus", args)
    results = {variant: [] for variant in VARIANTS} | earlier_runs(args)
    for seed in args.seeds:
        for variant in args.variants:  # interleaved: drift on the machine hits both variants alike
            if any(run_["seed"] == seed for run_ in results.get(variant, [])):
                continue
            out = args.cache / "runs" / f"{variant}-seed{seed}"
            trained = train(variant, seed, shards, out, args)
            scores = score(trained["model"], {"test": shards["test"]}, out / "score", args)
            test = {source: scores["voices"][voice] for source, voice in TEST_VOICES.items()}
            results[variant].append({"seed": seed, **trained, "test": test, "test_wer": scores["wer"]})
            save_results(args.results, make_report(results, args, started))
            print(
                f"{variant} seed {seed}: test WER {pct(scores['wer'])} % (welsh voice {pct(test['welsh'])}, "
                f"french voice {pct(test['french'])}), validation {trained['val']}",
                flush=True,
            )
    report = make_report(results, args, started)
    out = save_results(args.results, report)

    def with_spread(values: dict) -> str:
        return f"{pct(values['mean'])} ({pct(values['min'])}–{pct(values['max'])})"

    print_table(
        ["variant", "seeds", "test WER", "welsh voice", "french voice", "val welsh", "val french"],
        [
            [variant, len(results[variant]), with_spread(s["test_wer"])]
            + [with_spread(s["test"][source]) for source in TEST_VOICES]
            + [with_spread(s["val"][source]) for source in VOICES]
            for variant, s in report["summary"].items()
        ],
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

"""Breton on a real multilingual Whisper: OpenAI's base zero-shot against base fine-tuned with `--language br` and the
Breton normaliser, per test voice, at 1 and 2 ranks, and the same models exported to CTranslate2 and scored by
faster-whisper with language="br".

    python tools/fetch_pretrained.py base ~/.cache/wdsbr/base
    python bench/bench_breton.py --model ~/.cache/wdsbr/base [--seeds 0 1 2] [--ranks 1 2]

Corpus (made once under --cache): real Breton sentences, bench/data/br_sentences.txt (Common Voice's Breton
sentence collection, CC0: bench/data/README.md), read by espeak-ng, which has no Breton voice: Welsh voices read a
Welsh respelling, a French voice a French one (tools/make_sample_corpus.py's respell). The sentences are split
once, in a seeded order, into test, validation and training sentences: no test or validation sentence is ever
heard in training. Training and validation clips are read by five Welsh voice variants; the test sentences are read
by each of three voices training never hears: two other Welsh variants and a French voice, a voice family absent
from training. Every clip has its own speed and pitch.

Runs, seed by seed (seed 0 at every rank count, then seed 1, ...): zero-shot once, then `deepspeed --num_gpus N
launch/train.py` with the global batch split over N ranks, one evaluation at the last step (validation loss: its
best/ is the final model). Each final model is scored on the test clips by launch/evaluate.py in fp32 (greedy, at
most --max-new-tokens), per voice from its per-sample TSV, then exported (tools/export.py, float32) and scored by
faster-whisper with the same decoding (launch/evaluate.py --engine faster-whisper). Scores: `wer` with the Breton
normaliser (what training used), `wer_raw` (case and punctuation count), `wer_normalized` (the default normaliser
plus Breton numbers), `wer_whisper_basic` (transformers' BasicTextNormalizer), `cer_normalized`. Writes
bench/results/breton.json after every run (--results) and resumes from it: a run measured already is not redone.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_accuracy import BIN, CORES, run, speak_and_shard  # noqa: E402
from common import RESULTS, ROOT, evaluate_json, print_table, save_results  # noqa: E402
from make_sample_corpus import respell  # noqa: E402

SENTENCES = ROOT / "bench" / "data" / "br_sentences.txt"
TRAIN_VOICES = ["cy+m1", "cy+f1", "cy+m3", "cy+f2", "cy+m5"]
# test voices: two Welsh variants training never hears, and a French voice, a family it never hears
TEST_VOICES = ["cy+m7", "cy+f4", "fr-fr+m2"]
SCORES = ("wer", "wer_raw", "wer_normalized", "wer_whisper_basic", "cer_normalized")


# ---------------------------------------------------------------------------------------------- corpus


def speak(job: tuple[Path, str, str, int, int]) -> None:
    """ID.wav (espeak-ng reading the respelt sentence, trimmed, 16 kHz mono) + ID.txt (the sentence as written)."""
    path, voice, text, speed, pitch = job
    raw = path.with_suffix(".raw.wav")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), respell(text, voice)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "sox",
            "-R",
            "-D",
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
            "0.02",
            "0.5%",
            "reverse",
            "silence",
            "1",
            "0.02",
            "0.5%",
            "reverse",
            "pad",
            "0.15",
            "0.15",
            "gain",
            "-n",
            "-3",
        ],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")


def split_sentences(path: Path, test: int, validation: int) -> dict[str, list[str]]:
    """The sentence file's lines in a fixed seeded order, cut into test, validation and training sentences."""
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(1234).shuffle(sentences)
    return {
        "test": sentences[:test],
        "validation": sentences[test : test + validation],
        "train": sentences[test + validation :],
    }


def make_corpus(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """folder/corpus/SPLIT/VOICE/ID.wav + ID.txt, each split sharded on its own into folder/shards-SPLIT/train/;
    returns {split: its shard folder}. Made once: a folder made with other sizes is refused."""
    splits = {split: folder / f"shards-{split}" / "train" for split in ("train", "validation", "test")}
    sizes = {
        "train_clips": args.train_clips,
        "val_clips": args.val_clips,
        "test_sentences": args.test_sentences,
        "sentences": args.sentences.read_text(encoding="utf-8").count("\n"),
    }
    made = folder / "corpus.json"
    if made.is_file():
        if json.loads(made.read_text()) == sizes:
            return splits
        raise SystemExit(f"{folder}: holds a corpus of other sizes ({made.read_text()}); pass another --cache")
    shutil.rmtree(folder, ignore_errors=True)
    sentences = split_sentences(args.sentences, args.test_sentences, args.val_clips)
    if len(sentences["train"]) < 1:
        raise SystemExit(
            f"{args.sentences}: too few sentences for {args.test_sentences} test and {args.val_clips} validation"
        )
    rng, jobs = random.Random(99), []

    def add(split: str, voice: str, index: int, text: str) -> None:
        path = folder / "corpus" / split / voice.replace("+", "_") / f"{split}{index:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((path, voice, text, rng.randint(130, 170), rng.randint(30, 70)))

    train = sentences["train"]
    for index in range(args.train_clips):  # more clips than sentences: a sentence again, in another voice
        add("train", TRAIN_VOICES[index % len(TRAIN_VOICES)], index, train[index % len(train)])
    for index, text in enumerate(sentences["validation"]):
        add("validation", TRAIN_VOICES[(index + 2) % len(TRAIN_VOICES)], index, text)
    for voice in TEST_VOICES:
        for index, text in enumerate(sentences["test"]):
            add("test", voice, index, text)
    speak_and_shard(speak, jobs, folder, splits)
    made.write_text(json.dumps(sizes))
    return splits


# ------------------------------------------------------------------------------------------------ runs


def train(
    ranks: int, seed: int, shards: dict[str, Path], out: Path, args: argparse.Namespace, extra: tuple[str, ...] = ()
) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        str(BIN / "deepspeed"),
        "--log_level",
        "warning",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(29700 + seed),
        str(ROOT / "launch" / "train.py"),
        "--deepspeed",
        str(ROOT / "configs" / "ds_zero2.json"),
        "--model",
        str(args.model),
        "--language",
        "br",
        "--text-normalizer",
        "breton",
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
        "10",
        "--seed",
        str(seed),
        "--precision",
        args.precision,
        "--generation-max-length",
        str(args.max_new_tokens),
        "--keep-checkpoints",
        "1",
        *extra,
    ]
    wall = run(command, ranks, out.with_suffix(".log"))
    summary = json.loads((out / "summary.json").read_text())
    evaluation = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "eval"' in line
    ][-1]
    return {
        "model": str(out / "best"),
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall,
        "val_wer": evaluation["wer"],
        "val_loss": evaluation["val_loss"],
    }


def per_voice(tsv: Path) -> dict[str, float]:
    """WER of each test voice, from evaluate.py's per-sample TSV (keys are VOICE__ID)."""
    errors: dict[str, list[int]] = {}
    rows = tsv.read_text(encoding="utf-8").splitlines()
    header = rows[0].split("\t")
    for line in rows[1:]:
        row = dict(zip(header, line.split("\t")))
        voice = row["key"].split("__")[0].replace("_", "+")
        counts = errors.setdefault(voice, [0, 0])
        counts[0] += int(row["errors"])
        counts[1] += int(row["reference_words"])
    return {voice: wrong / max(1, words) for voice, (wrong, words) in sorted(errors.items())}


def score(model: str, shards: dict[str, Path], out: Path, args: argparse.Namespace, *extra: str) -> dict:
    """launch/evaluate.py on the test clips, fp32, greedy: the scores and the WER of each voice."""
    out.mkdir(parents=True, exist_ok=True)
    row = evaluate_json(
        model,
        shards["test"],
        "--output",
        str(out / "scores.tsv"),
        "--language",
        "br",
        "--text-normalizer",
        "breton",
        "--precision",
        "fp32",
        "--batch-size",
        "16",
        "--generation-max-length",
        str(args.max_new_tokens),
        *extra,
        threads=CORES,
        log=out / "evaluate.log",
    )
    return {
        **{key: row[key] for key in SCORES if key in row},
        "samples": row["samples"],
        "seconds": row["seconds"],
        "voices": per_voice(out / "scores.tsv"),
    }


def score_exported(model: str, shards: dict[str, Path], out: Path, args: argparse.Namespace) -> dict:
    exported = out / "best-ct2"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "export.py"),
            "--model",
            model,
            "--output",
            str(exported),
            "--quantization",
            "float32",
            "--overwrite",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return score(str(exported), shards, out / "score-ct2", args, "--engine", "faster-whisper")


# ------------------------------------------------------------------------------------------------ main


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "values": values}


def make_report(results: dict[str, list[dict]], args: argparse.Namespace, started: float) -> dict:
    summary = {}
    for name, rows in results.items():
        summary[name] = {
            "wer": spread([r["wer"] for r in rows]),
            "voices": {v: spread([r["voices"][v] for r in rows]) for v in rows[0]["voices"]},
        }
        if "ct2" in rows[0]:
            summary[name]["ct2_wer"] = spread([r["ct2"]["wer"] for r in rows])
            summary[name]["val_wer"] = spread([r["val_wer"] for r in rows])
    settings = {key: getattr(args, key) for key in SETTINGS}
    return {
        **settings,
        "model": str(args.model),
        "sentences": str(args.sentences),
        "train_voices": TRAIN_VOICES,
        "test_voices": TEST_VOICES,
        "runs": results,
        "summary": summary,
        "bench_seconds": time.perf_counter() - started,
    }


SETTINGS = (
    "train_clips",
    "val_clips",
    "test_sentences",
    "batch_size",
    "max_steps",
    "lr",
    "warmup_steps",
    "precision",
    "max_new_tokens",
)


def earlier_runs(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The runs of an earlier results file with the same settings (resume); refused if its settings differ."""
    path = RESULTS / f"{args.results}.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    changed = [name for name in SETTINGS if report.get(name) != getattr(args, name)]
    if changed:
        raise SystemExit(f"{path}: measured with other settings ({', '.join(changed)}); pass another --results")
    return report["runs"]


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        type=Path,
        default=Path.home() / ".cache" / "wdsbr" / "base",
        help="a multilingual Whisper folder (tools/fetch_pretrained.py base FOLDER)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "wdsbr" / "bench-breton",
        help="corpus, shards and runs (the corpus is made once)",
    )
    parser.add_argument("--sentences", type=Path, default=SENTENCES, help="one Breton sentence a line")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-clips", type=int, default=600)
    parser.add_argument("--val-clips", type=int, default=40)
    parser.add_argument("--test-sentences", type=int, default=80, help="each read by every test voice")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (per optimizer step)")
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="decoding limit (a looping zero-shot stops here)"
    )
    parser.add_argument("--results", default="breton", help="bench/results/RESULTS.json")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(
            f"{args.model}: no model folder there; make it with python tools/fetch_pretrained.py base {args.model}"
        )
    started = time.perf_counter()
    shards = make_corpus(args.cache, args)
    results = earlier_runs(args)
    if "zero-shot" not in results:
        results["zero-shot"] = [
            {"seed": None, **score(str(args.model), shards, args.cache / "runs" / "zero-shot", args)}
        ]
        save_results(args.results, make_report(results, args, started))
    print(f"zero-shot: WER {pct(results['zero-shot'][0]['wer'])} %", flush=True)
    for seed in args.seeds:
        for ranks in args.ranks:
            name = f"wdsbr-{ranks}"
            if any(row["seed"] == seed for row in results.get(name, [])):
                continue  # measured already
            out = args.cache / "runs" / f"{name}-seed{seed}"
            trained = train(ranks, seed, shards, out, args)
            row = {"seed": seed, **trained, **score(trained["model"], shards, out / "score", args)}
            row["ct2"] = score_exported(trained["model"], shards, out, args)
            results.setdefault(name, []).append(row)
            print(
                f"{name} seed {seed}: WER {pct(row['wer'])} % (faster-whisper {pct(row['ct2']['wer'])} %), per voice "
                + ", ".join(f"{v} {pct(w)} %" for v, w in row["voices"].items())
                + f"; validation {pct(row['val_wer'])} %; {row['train_seconds']:.0f} s training",
                flush=True,
            )
            save_results(args.results, make_report(results, args, started))  # after every run: resumable
    report = make_report(results, args, started)
    out = save_results(args.results, report)
    print(
        f"\nBreton: {Path(args.model).name}, {args.train_clips} training clips, global batch {args.batch_size}, "
        f"{args.max_steps} steps, lr {args.lr}, {args.precision}; test: {args.test_sentences} unseen sentences × "
        f"{len(TEST_VOICES)} unseen voices; WER % with the Breton normaliser, mean (min–max) over seeds\n"
    )
    voices = list(results["zero-shot"][0]["voices"])

    def cell(summary: dict) -> str:
        return (
            f"{pct(summary['mean'])} ({pct(summary['min'])}–{pct(summary['max'])})"
            if len(summary["values"]) > 1
            else pct(summary["mean"])
        )

    table = [
        [
            name,
            len(results[name]),
            cell(s["wer"]),
            *(cell(s["voices"][v]) for v in voices),
            cell(s["ct2_wer"]) if "ct2_wer" in s else "",
            cell(s["val_wer"]) if "val_wer" in s else "",
        ]
        for name, s in report["summary"].items()
    ]
    print_table(["run", "seeds", "test WER", *voices, "faster-whisper", "validation (training voices)"], table)
    print(f"\nwrote {out} in {report['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

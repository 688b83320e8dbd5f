"""n-gram LM fusion on the real multilingual base fine-tuned on synthetic Breton: WER without the LM (greedy, beam 5)
and with it (α, β tuned on validation, applied to test), in-domain and out-of-domain, per seed; decoding speed.

    python bench/bench_breton.py --model ~/.cache/wdsbr/base          # the fine-tuned models (one per seed)
    python bench/bench_lm.py [--seeds 0 1 2] [--test-sentences 40]

Models: bench_breton.py's 1-rank runs (`RUNS/wdsbr-1-seedS/best`: OpenAI's base fine-tuned on 600 clips of Breton
sentences read by Welsh espeak-ng voices), copied so that tune_lm.py's lm.json lands beside the copy.
LM: tools/build_lm.py, order 5, Breton normaliser, on bench/data/br_lm_text.txt (Common Voice's CC0 Ofis Publik
sentences not in br_sentences.txt) + bench_breton's training sentences, every validation, test and out-of-domain
sentence excluded (--exclude-sentences: the count removed is reported).
Tuning: tools/tune_lm.py on bench_breton's 40 validation clips (training voices), beam 5, the grid --alphas ×
--betas. Test, in-domain: the first --test-sentences of bench_breton's test sentences (the same CC0 collection as
the LM text, never in it), read by --voices (default: bench_breton's two unseen Welsh variants; its French test
voice, 86–89 % WER, left out for time). Test, out-of-domain: --test-sentences of bench/data/br_ood_sentences.txt
(another register and spelling; bench/data/README.md), read by the same voices. Each scored by launch/evaluate.py,
--precision (fp32), batch 16, at most 96 new tokens: greedy, beam 5, beam 5 + LM. Writes bench/results/lm.json
after every seed and resumes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import CORES, speak_and_shard  # noqa: E402
from bench_breton import SENTENCES, TEST_VOICES, speak, split_sentences  # noqa: E402
from common import RESULTS, ROOT, evaluate_json, print_table, save_results  # noqa: E402

LM_TEXT = ROOT / "bench" / "data" / "br_lm_text.txt"
OOD = ROOT / "bench" / "data" / "br_ood_sentences.txt"
DECODINGS = {"greedy": ["--num-beams", "1"], "beam": ["--num-beams", "5"]}


def make_test_sets(folder: Path, test: list[str], ood: list[str], voices: list[str]) -> dict[str, Path]:
    """folder/corpus/{in_domain,out_of_domain}/VOICE/ID.wav + ID.txt read by the test voices, sharded; made once."""
    splits = {name: folder / f"shards-{name}" / "train" for name in ("in_domain", "out_of_domain")}
    made = folder / "corpus.json"
    sizes = {"in_domain": test, "out_of_domain": ood}
    if made.is_file() and json.loads(made.read_text()) == {**sizes, "voices": voices}:
        return splits
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for name, sentences in sizes.items():
        for v, voice in enumerate(voices):
            for index, text in enumerate(sentences):
                path = folder / "corpus" / name / voice.replace("+", "_") / f"{name}{index:05d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((path, voice, text, 130 + (index * 7 + v * 11) % 41, 30 + (index * 13 + v * 5) % 41))
    speak_and_shard(speak, jobs, folder, splits)
    made.write_text(json.dumps({**sizes, "voices": voices}))
    return splits


def build_lm(folder: Path, breton: Path, held_out: list[str]) -> tuple[Path, dict]:
    """The 5-gram LM from the Ofis text and the training sentences, held-out sentences excluded."""
    lm = folder / "br-5gram.arpa"
    if lm.is_file() and Path(f"{lm}.json").is_file():
        return lm, json.loads(Path(f"{lm}.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train_sentences.txt"
    train.write_text("\n".join(split_sentences(SENTENCES, 80, 40)["train"]) + "\n", encoding="utf-8")
    excluded = folder / "held_out.txt"
    excluded.write_text("\n".join(held_out) + "\n", encoding="utf-8")
    command = [
        sys.executable, str(ROOT / "tools" / "build_lm.py"), str(LM_TEXT), str(train), "--order", "5",
        "--output", str(lm), "--text-normalizer", "breton", "--exclude-sentences", str(excluded),
        "--exclude-sentences", str(breton / "shards-validation"), "--overwrite",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    print(result.stderr.strip().splitlines()[-1], flush=True)
    return lm, json.loads(result.stdout.strip().splitlines()[-1])


def run_seed(seed: int, args, lm: Path, tests: dict[str, Path]) -> dict:
    out = args.cache / f"seed{seed}"
    model = out / "best"
    if not model.is_dir():
        shutil.copytree(args.breton / "runs" / f"wdsbr-1-seed{seed}" / "best", model)
    common = ["--text-normalizer", "breton", "--batch-size", "16", "--precision", args.precision]
    started = time.perf_counter()
    tune = subprocess.run(
        [
            sys.executable, str(ROOT / "tools" / "tune_lm.py"), "--model", str(model),
            "--data", str(args.breton / "shards-validation" / "train"), "--lm", str(lm), "--num-beams", "5",
            "--alphas", args.alphas, "--betas", args.betas, "--max-new-tokens", "96", "--language", "br", *common,
        ],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(CORES)},
    )  # fmt: skip
    (out / "tune.log").write_text(tune.stderr)
    if tune.returncode:
        raise RuntimeError(f"tune_lm.py failed for seed {seed}: see {out / 'tune.log'}")
    tuned = json.loads((model / "lm.json").read_text())
    result = {
        "seed": seed,
        "alpha": tuned["alpha"],
        "beta": tuned["beta"],
        "validation": {"greedy": tuned["wer_greedy"], "beam": tuned["wer_beam"], "lm": tuned["wer_lm"]},
        "grid": tuned["grid"],
        "tune_seconds": round(time.perf_counter() - started, 1),
    }
    decodings = {**DECODINGS, "lm": ["--num-beams", "5", "--lm", str(lm)]}
    for name, shards in tests.items():
        result[name] = {}
        for decoding, extra in decodings.items():
            row = evaluate_json(
                model, shards, "--language", "br", "--generation-max-length", "96",
                *common, *extra, threads=CORES, log=out / f"{name}-{decoding}.log",
            )  # fmt: skip
            result[name][decoding] = {
                "wer": row["wer"],
                "cer": row["cer"],
                "seconds": row["seconds"],
                "rtf": row["rtf"],
            }
            print(f"seed {seed} {name} {decoding}: WER {100 * row['wer']:.2f} % in {row['seconds']:.0f} s", flush=True)
    return result


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def make_report(runs: list[dict], args, lm_info: dict, started: float) -> dict:
    summary = {}
    for name in ("in_domain", "out_of_domain"):
        rel = [1 - run[name]["lm"]["wer"] / run[name]["beam"]["wer"] for run in runs]
        slow = [run[name]["lm"]["seconds"] / run[name]["beam"]["seconds"] for run in runs]
        summary[name] = {
            **{d: spread([run[name][d]["wer"] for run in runs]) for d in ("greedy", "beam", "lm")},
            "relative_reduction_vs_beam": spread(rel),
            "lm_seconds_over_beam": spread(slow),
        }
    return {
        "seeds": [run["seed"] for run in runs],
        "alphas": args.alphas,
        "betas": args.betas,
        "test_sentences": args.test_sentences,
        "voices": args.voices,
        "precision": args.precision,
        "lm": lm_info,
        "runs": runs,
        "summary": summary,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--breton", type=Path, default=Path.home() / ".cache" / "wdsbr" / "bench-breton")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wdsbr" / "bench-lm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-sentences", type=int, default=30, help="per test set, each read by every --voices")
    parser.add_argument("--voices", nargs="+", default=TEST_VOICES[:2], help="test voices (default: the 2 Welsh)")
    parser.add_argument("--alphas", default="0.25 0.5 1")
    parser.add_argument("--betas", default="0 1")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--results", default="lm", help="bench/results/RESULTS.json")
    args = parser.parse_args()
    started = time.perf_counter()
    splits = split_sentences(SENTENCES, 80, 40)
    ood = [line.strip() for line in OOD.read_text(encoding="utf-8").splitlines() if line.strip()]
    test, ood = splits["test"][: args.test_sentences], ood[: args.test_sentences]
    tests = make_test_sets(args.cache / "tests", test, ood, args.voices)
    lm, lm_info = build_lm(args.cache / "lm", args.breton, splits["test"] + splits["validation"] + ood)
    earlier = RESULTS / f"{args.results}.json"
    runs = json.loads(earlier.read_text())["runs"] if earlier.is_file() else []
    for seed in args.seeds:
        if any(run["seed"] == seed for run in runs):
            continue
        runs.append(run_seed(seed, args, lm, tests))
        save_results(args.results, make_report(runs, args, lm_info, started))
    report = make_report(runs, args, lm_info, started)
    save_results(args.results, report)
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    rows = []
    for run in runs:
        for name in ("in_domain", "out_of_domain"):
            r = run[name]
            rows.append(
                [run["seed"], name, f"{run['alpha']:g}/{run['beta']:g}", pct(r["greedy"]["wer"]), pct(r["beam"]["wer"]),
                 pct(r["lm"]["wer"]), pct(1 - r["lm"]["wer"] / r["beam"]["wer"]),
                 f"{r['lm']['seconds'] / r['beam']['seconds']:.2f}"]
            )  # fmt: skip
    print_table(["seed", "test", "α/β", "greedy", "beam 5", "beam 5 + LM", "relative %", "LM time / beam"], rows)


if __name__ == "__main__":
    main()

"""launch/evaluate.py against a plain transformers `generate()` loop on the same clips: how much of evaluation's time
is the model's, and how much is ours.

    python bench/bench_evaluate.py [--model ~/.cache/wdsbr/bench-breton/runs/wdsbr-1-seed0/best] [--repeats 2]
    python bench/bench_evaluate.py --num-beams 5 --clips 48      # beam search: writes evaluate-beam5.json

Clips: the first --clips of bench_breton.py's Breton test clips (by file name), sharded once on their own.
  evaluate.py          `launch/evaluate.py --model M --data SHARDS`, fp32, --batch-size, --num-beams, --max-new-tokens,
                       --num-workers 1 (a subprocess: its wall time, and its own `seconds`, which leave out start-up
                       and model loading)
  generate() loop      in this process: the same clips read with soundfile in file order, batches of --batch-size
                       through the model's WhisperFeatureExtractor and `model.generate(language="br",
                       task="transcribe", max_new_tokens=…, num_beams=…)` with
                       transformers' own cache, decoded; timed from the first read to the last
                       decode (model loading left out, as in evaluate's `seconds`)
Both use --threads torch threads; they alternate over --repeats. WER of both with the Breton normaliser. Writes
bench/results/evaluate.json (greedy) or evaluate-beamN.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, evaluate_json, print_table, save_results  # noqa: E402

from wdsbr.corpus import open_corpus  # noqa: E402
from wdsbr.model import load_model, load_processor  # noqa: E402
from wdsbr.scoring import Prediction, score_all  # noqa: E402
from wdsbr.shards import ShardOptions, shard_corpus  # noqa: E402

CACHE = Path.home() / ".cache" / "wdsbr"


def make_subset(source: Path, folder: Path, clips: int) -> tuple[list[Path], Path]:
    """The first `clips` wav files of `source` (with their .txt) linked under folder/corpus, sharded once."""
    wavs = sorted(source.rglob("*.wav"))[:clips]
    if len(wavs) < clips:
        raise SystemExit(f"{source}: {len(wavs)} clips, fewer than --clips {clips}; run bench/bench_breton.py")
    shards = folder / "shards" / "train"
    if not (folder / "shards" / "manifest.json").is_file():
        for wav in wavs:
            link = folder / "corpus" / wav.parent.name / wav.name
            link.parent.mkdir(parents=True, exist_ok=True)
            for path in (wav, wav.with_suffix(".txt")):
                target = link.with_suffix(path.suffix)
                if not target.exists():
                    target.symlink_to(path)
        shard_corpus(
            open_corpus(folder / "corpus"),
            folder / "shards",
            ShardOptions(val_fraction=0, test_fraction=0, workers=1),
            progress=False,
        )
    return wavs, shards


def plain_loop(model, processor, wavs: list[Path], args) -> dict:
    start = time.perf_counter()
    results = []
    for first in range(0, len(wavs), args.batch_size):
        chunk = wavs[first : first + args.batch_size]
        audio = [sf.read(wav, dtype="float32")[0] for wav in chunk]
        features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
        with torch.no_grad():
            generated = model.generate(
                input_features=features,
                language="br",
                task="transcribe",
                max_new_tokens=args.max_new_tokens,
                num_beams=args.num_beams,
            )
        texts = processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
        results += [
            Prediction(f"{w.parent.name}__{w.stem}", w.with_suffix(".txt").read_text(encoding="utf-8"), t.strip())
            for w, t in zip(chunk, texts, strict=True)
        ]
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "wer": score_all(results, "breton")["wer"], "samples": len(results)}


def evaluate_py(model: Path, shards: Path, args) -> dict:
    start = time.perf_counter()
    row = evaluate_json(
        model,
        shards,
        "--language",
        "br",
        "--text-normalizer",
        "breton",
        "--precision",
        "fp32",
        "--batch-size",
        str(args.batch_size),
        "--generation-max-length",
        str(args.max_new_tokens),
        "--num-workers",
        "1",
        "--num-beams",
        str(args.num_beams),
        threads=args.threads,
    )
    wall = time.perf_counter() - start
    return {"seconds": row["seconds"], "wall_seconds": round(wall, 2), "wer": row["wer"], "samples": row["samples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=CACHE / "bench-breton" / "runs" / "wdsbr-1-seed0" / "best")
    parser.add_argument("--source", type=Path, default=CACHE / "bench-breton" / "corpus" / "test")
    parser.add_argument("--work", type=Path, default=CACHE / "bench-evaluate")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. the commit measured)")
    args = parser.parse_args()
    wavs, shards = make_subset(args.source, args.work / f"clips-{args.clips}", args.clips)
    torch.set_num_threads(args.threads)
    model = load_model(str(args.model)).eval()
    processor = load_processor(str(args.model), "br")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    runs: dict[str, list[dict]] = {"evaluate.py": [], "generate() loop": []}
    for repeat in range(args.repeats):
        for name in runs:
            row = (
                evaluate_py(args.model, shards, args)
                if name == "evaluate.py"
                else plain_loop(model, processor, wavs, args)
            )
            runs[name].append(row)
            print(f"repeat {repeat} {name}: {row}", flush=True)
    summary = {name: statistics.mean(r["seconds"] for r in rows) for name, rows in runs.items()}
    report = {
        "model": str(args.model),
        "clips": args.clips,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "num_beams": args.num_beams,
        "threads": args.threads,
        "commit": commit.stdout.strip(),
        "label": args.label,
        "runs": runs,
        "ratio": summary["evaluate.py"] / summary["generate() loop"],
    }
    name = "evaluate" if args.num_beams == 1 else f"evaluate-beam{args.num_beams}"
    save_results(name, report)
    print_table(
        ["runner", "seconds (each)", "mean", "WER %"],
        [
            [name, " ".join(f"{r['seconds']:.1f}" for r in rows), f"{summary[name]:.1f}", f"{100 * rows[0]['wer']:.2f}"]
            for name, rows in runs.items()
        ],
    )
    print(f"evaluate.py / generate() loop: {report['ratio']:.2f}x; results: {RESULTS / name}.json")


if __name__ == "__main__":
    main()

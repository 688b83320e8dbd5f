"""whisper.cpp against transformers and faster-whisper on real Whispers: WER and real-time factor of the same clips
decoded the same way (greedy, no timestamps, the language forced, the same new-token limit).

    python bench/bench_ggml.py [--base ~/.cache/wdsbr/base] [--tiny-en ~/.cache/wdsbr/tiny.en] [--fine-tuned DIR]

Models and clips:
  tiny.en, zero-shot      bench_accuracy.py's 150 English test clips (espeak-ng voices never trained on; made once)
  base, zero-shot         bench_breton.py's Breton test clips (the first --breton-clips by key)
  base, fine-tuned        bench_breton.py's 1-rank run at seed 0 (--fine-tuned), the same Breton clips
For each: transformers (launch/evaluate.py, fp32, batch 16), faster-whisper (tools/export.py --to ct2, float32,
`--engine faster-whisper`), whisper.cpp (tools/export.py --to ggml, f16 and f32, `--engine whisper.cpp`, through
pywhispercpp, clip by clip). A runtime that fails is recorded with its error, not dropped. Each row: WER, CER and
the real-time factor (transcription seconds per audio second, model loading left out), this machine, 2 threads,
side by side in one run. Writes bench/results/ggml.json after every model (--append keeps the models measured
before; --only picks models).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import make_corpus  # noqa: E402
from common import RESULTS, evaluate_json, print_table, save_results  # noqa: E402

from wdsbr.export import export_ct2  # noqa: E402
from wdsbr.ggml import export_ggml  # noqa: E402

THREADS = len(os.sched_getaffinity(0))
CACHE = Path.home() / ".cache" / "wdsbr"


def runtimes(model: Path, work: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Each runtime's model (exported once into `work`) and its evaluate.py options."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "ct2" / "model.bin").is_file():
        export_ct2(model, work / "ct2", "float32", overwrite=True)
    for ftype in ("f16", "f32"):
        if not (work / f"ggml-{ftype}.bin").is_file():
            export_ggml(model, work / f"ggml-{ftype}.bin", ftype, overwrite=True)
    return {
        "transformers fp32": (model, ("--precision", "fp32")),
        "faster-whisper float32": (work / "ct2", ("--engine", "faster-whisper", "--compute-type", "float32")),
        "whisper.cpp f16": (work / "ggml-f16.bin", ("--engine", "whisper.cpp")),
        "whisper.cpp f32": (work / "ggml-f32.bin", ("--engine", "whisper.cpp")),
    }


def measure(name: str, model: Path, data: Path, language: str, max_samples: int | None, args) -> dict:
    rows = {}
    for runtime, (path, options) in runtimes(model, args.work / name).items():
        limit = ("--max-samples", str(max_samples)) if max_samples else ()
        try:
            row = evaluate_json(
                path,
                data,
                "--language",
                language,
                "--batch-size",
                "16",
                "--generation-max-length",
                str(args.max_new_tokens),
                "--num-workers",
                "1",
                *limit,
                *options,
                threads=THREADS,
            )
            rows[runtime] = {k: row[k] for k in ("wer", "cer", "samples", "seconds", "rtf", "precision")}
        except RuntimeError as error:  # recorded: a runtime that cannot run the file is a result too
            rows[runtime] = {"error": str(error).strip().splitlines()[-1][:300]}
        print(f"{name} / {runtime}: {rows[runtime]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-en", type=Path, default=CACHE / "tiny.en")
    parser.add_argument("--base", type=Path, default=CACHE / "base")
    parser.add_argument("--fine-tuned", type=Path, default=CACHE / "bench-breton" / "runs" / "wdsbr-1-seed0" / "best")
    parser.add_argument("--english-cache", type=Path, default=CACHE / "bench-accuracy")
    parser.add_argument("--breton-cache", type=Path, default=CACHE / "bench-breton")
    parser.add_argument("--work", type=Path, default=CACHE / "bench-ggml")
    parser.add_argument("--breton-clips", type=int, default=60, help="the first N Breton test clips (by key)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--only", nargs="+", help="measure only these models (tiny.en, base, base-fine-tuned)")
    parser.add_argument("--append", action="store_true", help="keep bench/results/ggml.json's other models")
    args = parser.parse_args()
    os.environ["GGML_NO_BACKTRACE"] = "1"  # a whisper.cpp abort ends its evaluate.py at once (no gdb that can hang)
    started = time.perf_counter()
    english = make_corpus(args.english_cache, 1200, 150)["test"]
    breton = args.breton_cache / "shards-test" / "train"
    if not (breton.parent / "manifest.json").is_file():
        raise SystemExit(f"{breton}: no Breton test shards; make them with python bench/bench_breton.py")
    models = {
        "tiny.en": (args.tiny_en, english, "en", None),
        "base": (args.base, breton, "br", args.breton_clips),
        "base-fine-tuned": (args.fine_tuned, breton, "br", args.breton_clips),
    }
    report = {"threads": THREADS, "max_new_tokens": args.max_new_tokens, "breton_clips": args.breton_clips}
    earlier = RESULTS / "ggml.json"
    report["models"] = json.loads(earlier.read_text())["models"] if args.append and earlier.is_file() else {}
    for name, (model, data, language, limit) in models.items():
        if args.only and name not in args.only:
            continue
        if not (model / "config.json").is_file():
            raise SystemExit(f"{model}: no model folder (tools/fetch_pretrained.py, bench/bench_breton.py)")
        report["models"][name] = {"model": str(model), "rows": measure(name, model, data, language, limit, args)}
        save_results("ggml", {**report, "bench_seconds": round(time.perf_counter() - started, 1)})
    table = []
    for name, entry in report["models"].items():
        reference = entry["rows"]["transformers fp32"].get("wer")
        for runtime, row in entry["rows"].items():
            if "error" in row:
                table.append([name, runtime, "failed", "", "", row["error"][:60]])
                continue
            delta = f"{100 * (row['wer'] - reference):+.2f}" if reference is not None else ""
            table.append([name, runtime, f"{100 * row['wer']:.2f}", delta, f"{row['rtf']:.3f}", row["samples"]])
    print_table(["model", "runtime", "WER %", "Δ pp", "RTF", "clips"], table)
    print(f"results: {RESULTS / 'ggml.json'}")


if __name__ == "__main__":
    main()

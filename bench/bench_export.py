"""Deployment parity on a real Whisper: transformers vs the faster-whisper export (tools/export.py), float32 and
int8, against CTranslate2's reference converter, and which faster-whisper default moves the WER.

    python bench/bench_export.py --model ~/.cache/wdsbr/tiny.en [--model runs/NAME/best …]

Data: bench_accuracy.py's test clips (150 espeak-ng clips of voices never used in training; made there, once).
For every --model (zero-shot tiny.en; a fine-tuned best/):
  transformers        launch/evaluate.py, fp32, greedy, at most --max-new-tokens
  ct2 float32 / int8  tools/export.py, then launch/evaluate.py --engine faster-whisper (decoding as generate())
  reference float32   `ct2-transformers-converter --copy_files tokenizer.json …`, the same evaluate.py run
  faster-whisper defaults, then one default at a time switched to generate()'s (cumulative): greedy, no
                      temperature fallback / thresholds, no timestamps, the model's suppressed tokens, the new-token
                      limit — the last row is transcribe_kwargs, i.e. what --engine faster-whisper runs
  ct2 on transformers' features   CTranslate2 fed the training log-mel (audio padded with silence to 30 s)
                      instead of faster-whisper's (log-mel padded with zeros): isolates that one difference
Each row: WER, CER and the real-time factor (seconds per audio second, this machine, 2 threads), side by side.
Writes bench/results/export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import make_corpus  # noqa: E402
from common import RESULTS, evaluate_json, print_table, save_results  # noqa: E402

from wdsbr.export import export_ct2, load_faster_whisper, suppressed_tokens, transcribe_kwargs  # noqa: E402
from wdsbr.features import log_mel_spectrogram  # noqa: E402
from wdsbr.scoring import Prediction, score_all  # noqa: E402

BIN = Path(sys.executable).parent
THREADS = len(os.sched_getaffinity(0))


def evaluate(model: Path, data: Path, args, *extra: str) -> dict:
    row = evaluate_json(
        model,
        data,
        "--language",
        "en",
        "--batch-size",
        "16",
        "--generation-max-length",
        str(args.max_new_tokens),
        *getattr(args, "limit", []),
        *extra,
        threads=THREADS,
    )
    return {"wer": row["wer"], "cer": row["cer"], "samples": row["samples"], "rtf": row["rtf"]}


def clips_of(corpus: Path) -> list[tuple[str, np.ndarray, str]]:
    return [
        (wav.stem, sf.read(wav, dtype="float32")[0], wav.with_suffix(".txt").read_text(encoding="utf-8").strip())
        for wav in sorted(corpus.rglob("*.wav"))
    ]


def scored(results: list[Prediction], seconds: float, audio_seconds: float) -> dict:
    scores = score_all(results, "default")
    return {"wer": scores["wer"], "cer": scores["cer"], "samples": scores["samples"], "rtf": seconds / audio_seconds}


def faster_whisper_variants(ct2: Path, clips, args) -> dict[str, dict]:
    """faster-whisper's transcribe() from its defaults to generate()'s settings, one switch at a time."""
    whisper = load_faster_whisper(ct2, "float32", threads=THREADS)
    audio_seconds = sum(len(audio) for _, audio, _ in clips) / 16_000
    ours = transcribe_kwargs("en", 1, args.max_new_tokens, suppressed_tokens(ct2))
    steps = [
        ("faster-whisper defaults", {"language": "en"}),
        ("+ greedy (beam 1)", {"beam_size": 1, "best_of": 1}),
        (
            "+ no temperature fallback, no thresholds",
            {
                "temperature": 0.0,
                "compression_ratio_threshold": None,
                "log_prob_threshold": None,
                "no_speech_threshold": None,
            },
        ),
        ("+ no timestamps, no previous text", {"without_timestamps": True, "condition_on_previous_text": False}),
        ("+ the model's suppressed tokens", {"suppress_tokens": ours["suppress_tokens"]}),
        ("+ the new-token limit (= --engine faster-whisper)", {"max_new_tokens": ours["max_new_tokens"]}),
    ]
    kwargs, rows = {}, {}
    for name, change in steps:
        kwargs.update(change)
        if name == steps[-1][0]:  # the rest of transcribe_kwargs are faster-whisper's defaults (task, VAD off, …)
            assert all(kwargs[k] == v for k, v in ours.items() if k in kwargs), (
                "the steps must end at transcribe_kwargs"
            )
            kwargs = dict(ours)
        start = time.perf_counter()
        results = []
        for key, audio, text in clips:
            segments, _ = whisper.transcribe(audio, **kwargs)
            results.append(Prediction(key, text, " ".join(s.text.strip() for s in segments).strip()))
        rows[name] = scored(results, time.perf_counter() - start, audio_seconds)
        print(f"  {name}: WER {rows[name]['wer']:.4f}", flush=True)
    return rows


def ct2_on_training_features(ct2: Path, model: Path, clips, args) -> dict:
    """CTranslate2 greedy on the log-mel transformers computes (silence-padded audio), batches of 16."""
    import ctranslate2
    from transformers import WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast.from_pretrained(model)
    whisper = ctranslate2.models.Whisper(str(ct2), device="cpu", compute_type="float32", intra_threads=THREADS)
    multilingual = whisper.is_multilingual
    prompt = tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", *(["<|en|>", "<|transcribe|>"] if multilingual else []), "<|notimestamps|>"]
    )
    audio_seconds = sum(len(audio) for _, audio, _ in clips) / 16_000
    start = time.perf_counter()
    results = []
    for first in range(0, len(clips), 16):
        batch = clips[first : first + 16]
        features = log_mel_spectrogram([audio for _, audio, _ in batch], n_mels=whisper.n_mels).numpy()
        out = whisper.generate(
            ctranslate2.StorageView.from_array(features),
            [prompt] * len(batch),
            beam_size=1,
            max_length=min(2 * args.max_new_tokens, 448),
            suppress_tokens=suppressed_tokens(ct2),
        )
        for (key, _, text), result in zip(batch, out):
            results.append(
                Prediction(key, text, tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True).strip())
            )
    return scored(results, time.perf_counter() - start, audio_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="a Whisper folder (repeat); default: tiny.en")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wdsbr" / "bench-accuracy")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "wdsbr" / "bench-export")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--append", action="store_true", help="keep the models of bench/results/export.json, add these")
    parser.add_argument(
        "--max-clips",
        type=int,
        default=None,
        help="a quick check of the bench itself: N clips (evaluate.py takes the shards' first N, maybe other clips)",
    )
    args = parser.parse_args()
    models = args.model or [Path.home() / ".cache" / "wdsbr" / "tiny.en"]
    started = time.perf_counter()
    data = make_corpus(args.cache, 1200, 150)["test"]
    clips = clips_of(args.cache / "corpus" / "test")[: args.max_clips]
    if args.max_clips:  # evaluate.py takes the same first N samples of the shards (sorted by key, as clips_of)
        args.limit = ["--max-samples", str(args.max_clips)]
    report = {"clips": len(clips), "max_new_tokens": args.max_new_tokens, "threads": THREADS, "models": {}}
    earlier = RESULTS / "export.json"
    if args.append and earlier.is_file():
        previous = json.loads(earlier.read_text())
        if (previous["clips"], previous["max_new_tokens"]) != (report["clips"], report["max_new_tokens"]):
            raise SystemExit(f"{earlier}: measured on other clips or another new-token limit; drop --append")
        report["models"] = previous["models"]
    for model in models:
        name = model.parent.name + "/" + model.name if model.name in ("best", "final") else model.name
        print(f"{name}:", flush=True)
        work = args.work / name.replace("/", "-")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rows = {"transformers fp32": evaluate(model, data, args, "--precision", "fp32")}
        for quantization in ("float32", "int8"):
            start = time.perf_counter()
            export_ct2(model, work / f"ct2-{quantization}", quantization)
            rows[f"export {quantization}, faster-whisper"] = {
                **evaluate(work / f"ct2-{quantization}", data, args, "--engine", "faster-whisper"),
                "export_seconds": time.perf_counter() - start,
            }
        copy = [f for f in ("tokenizer.json", "preprocessor_config.json") if (model / f).is_file()]
        subprocess.run(
            [
                str(BIN / "ct2-transformers-converter"),
                "--model",
                str(model),
                "--output_dir",
                str(work / "reference"),
                "--copy_files",
                *copy,
                "--quantization",
                "float32",
            ],
            check=True,
            capture_output=True,
        )
        rows["reference converter float32, faster-whisper"] = evaluate(
            work / "reference", data, args, "--engine", "faster-whisper"
        )
        rows["ct2 float32 on transformers' features"] = ct2_on_training_features(
            work / "ct2-float32", model, clips, args
        )
        variants = faster_whisper_variants(work / "ct2-float32", clips, args)
        report["models"][name] = {"rows": rows, "faster_whisper_defaults_to_ours": variants}
        save_results("export", {**report, "bench_seconds": time.perf_counter() - started})
        table = [
            [
                row,
                f"{100 * r['wer']:.2f} %",
                f"{100 * r['cer']:.2f} %",
                f"{r['rtf']:.4f}",
                f"{rows['transformers fp32']['rtf'] / r['rtf']:.2f}×",
            ]
            for row, r in {**rows, **variants}.items()
        ]
        print_table(["run", "WER", "CER", "RTF", "speed vs transformers"], table)
    out = save_results("export", {**report, "bench_seconds": time.perf_counter() - started})
    print(f"\nwrote {out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Long-form WER against short-clip WER on the same speech, for any Whisper folders.

    python bench/bench_longform.py --models ~/.cache/wdsbr/tiny.en ~/.cache/wdsbr/bench-accuracy/runs/wdsbr-1-seed0/best

Recordings: the test clips of bench_accuracy.py's corpus (voices never heard in training; made there, under
--cache), in each voice's order, joined with --gap seconds of silence into recordings of --clips clips
(~3 s each: 25 clips ≈ 80 s); the reference is their transcripts joined. Each model is scored twice by
launch/evaluate.py on exactly those clips: short (`--data` the clips, one 30 s window each, no timestamps) and
long (`--long-form`: each recording whole, sequential long-form generate() with timestamps). Greedy, fp32, the
`default` normaliser; new tokens: 48 per clip, 224 per 30 s window. --condition-on-previous also scores long
form with each window prompted by the text decoded before it (as faster-whisper decodes; what train.py
--prev-text trains for); --temperature-fallback also scores it with Whisper's temperature fallback (long_fb, and
long_prev_fb with --condition-on-previous: faster-whisper's default decoding, less its VAD and beams). Writes
bench/results/RESULTS.json (--results, default longform: the ratio long/short per model).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import evaluate_json, print_table, save_results  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def make_recordings(test_corpus: Path, out: Path, clips: int, count: int, gap: float) -> tuple[Path, Path]:
    """out/long/RECxx.wav + .txt (joined clips) and out/short/ (the same clips, linked); both made once."""
    long, short = out / "long", out / "short"
    if long.is_dir() and short.is_dir():
        return long, short
    long.mkdir(parents=True)
    short.mkdir(parents=True)
    made = 0
    for voice in sorted(p for p in test_corpus.iterdir() if p.is_dir()):
        wavs = sorted(voice.glob("*.wav"))
        for start in range(0, len(wavs) - clips + 1, clips):
            if made == count:
                break
            parts, texts = [], []
            for wav in wavs[start : start + clips]:
                audio, rate = sf.read(wav, dtype="float32")
                assert rate == 16_000, wav
                parts += [audio, np.zeros(int(gap * rate), np.float32)]
                texts.append(wav.with_suffix(".txt").read_text(encoding="utf-8").strip())
                for suffix in (".wav", ".txt"):
                    (short / f"rec{made:02d}-{wav.stem}{suffix}").symlink_to(wav.with_suffix(suffix))
            sf.write(long / f"rec{made:02d}.wav", np.concatenate(parts[:-1]), 16_000)
            (long / f"rec{made:02d}.txt").write_text(" ".join(texts) + "\n", encoding="utf-8")
            made += 1
    return long, short


def evaluate(model: str, data: Path, out: Path, kind: str) -> dict:
    """kind: short (clip by clip), long (--long-form), long_prev (--long-form --condition-on-previous), and either
    long one with _fb (--temperature-fallback)."""
    out.mkdir(parents=True, exist_ok=True)
    flags = (
        (["--long-form"] if kind != "short" else [])
        + (["--condition-on-previous"] if "_prev" in kind else [])
        + (["--temperature-fallback"] if kind.endswith("_fb") else [])
    )
    return evaluate_json(
        model,
        data,
        "--output",
        str(out / "scores.tsv"),
        "--language",
        "en",
        "--precision",
        "fp32",
        "--num-workers",
        "1",
        "--generation-max-length",
        "48" if kind == "short" else "224",
        *flags,
        threads=CORES,
        log=out / "evaluate.log",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="Whisper folders (English: the corpus is English)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "wdsbr" / "bench-accuracy",
        help="bench_accuracy.py's cache: its corpus/test/ holds the clips",
    )
    parser.add_argument("--clips", type=int, default=25, help="clips per recording")
    parser.add_argument("--recordings", type=int, default=6)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds of silence between clips")
    parser.add_argument(
        "--condition-on-previous",
        action="store_true",
        help="also score long-form with each window prompted by the text before it (long_prev)",
    )
    parser.add_argument(
        "--temperature-fallback",
        action="store_true",
        help="also score long-form with Whisper's temperature fallback (long_fb; long_prev_fb)",
    )
    parser.add_argument("--results", default="longform", help="bench/results/RESULTS.json")
    args = parser.parse_args()
    started = time.perf_counter()
    test_corpus = args.cache / "corpus" / "test"
    if not test_corpus.is_dir():
        raise SystemExit(f"{test_corpus}: no test clips; run bench/bench_accuracy.py --cache {args.cache} first")
    folder = args.cache / f"longform-{args.clips}x{args.recordings}-gap{args.gap:g}"
    long, short = make_recordings(test_corpus, folder, args.clips, args.recordings, args.gap)
    rows = []
    for index, model in enumerate(args.models):
        runs = folder / "runs" / f"{index:02d}-{Path(model).parent.name}-{Path(model).name}"
        longs = ["long"] + (["long_prev"] if args.condition_on_previous else [])
        longs += [f"{kind}_fb" for kind in longs] if args.temperature_fallback else []
        kinds = [("short", short)] + [(kind, long) for kind in longs]
        scores = {kind: evaluate(model, data, runs / kind, kind) for kind, data in kinds}
        row = {
            "model": model,
            **{f"{kind}_{key}": s[key] for kind, s in scores.items() for key in ("wer", "cer", "samples", "seconds")},
            **{
                f"{kind}_over_short": scores[kind]["wer"] / scores["short"]["wer"] if scores["short"]["wer"] else None
                for kind in scores
                if kind != "short"
            },
        }
        rows.append(row)
        print(
            f"{model}: short WER {row['short_wer']:.4f}, "
            + ", ".join(f"{kind} {row[f'{kind}_wer']:.4f}" for kind in longs),
            flush=True,
        )
    seconds = sum(sf.info(p).duration for p in long.glob("*.wav"))
    out = save_results(
        args.results,
        {
            "recordings": args.recordings,
            "clips_per_recording": args.clips,
            "gap": args.gap,
            "recording_seconds": seconds,
            "models": rows,
            "bench_seconds": time.perf_counter() - started,
        },
    )
    print(f"\n{args.recordings} recordings of {args.clips} clips ({seconds / args.recordings:.0f} s each on average)\n")
    names = {
        "long": "long-form WER",
        "long_prev": "previous text",
        "long_fb": "fallback",
        "long_prev_fb": "previous text + fallback",
    }
    print_table(
        ["model", "short-clip WER"] + [heading for kind in longs for heading in (names[kind], "/ short")],
        [
            [r["model"], f"{100 * r['short_wer']:.2f} %"]
            + [
                cell
                for kind in longs
                for cell in (
                    f"{100 * r[f'{kind}_wer']:.2f} %",
                    f"{r[f'{kind}_over_short']:.2f}×" if r[f"{kind}_over_short"] else "",
                )
            ]
            for r in rows
        ],
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

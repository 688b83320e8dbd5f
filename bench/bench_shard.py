"""Benchmark sharding: `tools/shard_corpus.py` against plain `tar` of the same files (a floor no packer beats).

    python bench/bench_shard.py [--clips 300] [--repeats 3] [--workers 1 2]

Two corpora of the same --clips clips (2-8 s, ID.wav + ID.txt, 16-bit PCM), candidates interleaved per repetition:
  - resampling:    44.1 kHz wav in -> 16 kHz flac shards (the default output), --workers 1 and 2
  - no resampling: 16 kHz wav in -> 16 kHz wav shards (--audio-format wav), --workers 1 and 2
  - tar:           `tar cf` of each corpus folder (every .wav and .txt into one archive, no checks)
Rates are clips/s and MB/s of source audio (the .wav bytes) over the whole command, interpreter start-up and
imports included (what a user waits for); the tool's own timer (its manifest's `run`, after start-up) is
recorded too. The files are in the page cache (just written), so this measures CPU, not the disk.
Writes bench/results/shard.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fmt, plural, print_table, save_results, summarize, write_corpus  # noqa: E402


def shard_command(corpus: Path, output: Path, workers: int, audio_format: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "tools" / "shard_corpus.py"),
        str(corpus),
        str(output),
        "--overwrite",
        "--no-progress",
        "--workers",
        str(workers),
        "--audio-format",
        audio_format,
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
    ]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        tmp = Path(tmp)
        corpora = {"44.1 kHz": tmp / "wav44k", "16 kHz": tmp / "wav16k"}
        write_corpus(corpora["44.1 kHz"], args.clips, sample_rate=44_100)
        write_corpus(corpora["16 kHz"], args.clips, sample_rate=16_000)
        audio_mb = {rate: sum(p.stat().st_size for p in folder.glob("*.wav")) / 1e6 for rate, folder in corpora.items()}

        # name -> (command, source corpus, output folder or tar file)
        candidates = {
            "tar, 44.1 kHz wav": (
                ["tar", "cf", str(tmp / "out.tar"), "-C", str(corpora["44.1 kHz"]), "."],
                "44.1 kHz",
                None,
            )
        }
        for workers in args.workers:
            candidates[f"shard_corpus, 44.1 kHz wav -> 16 kHz flac, {plural(workers, 'worker')}"] = (
                shard_command(corpora["44.1 kHz"], tmp / "out", workers, "flac"),
                "44.1 kHz",
                tmp / "out",
            )
        candidates["tar, 16 kHz wav"] = (
            ["tar", "cf", str(tmp / "out.tar"), "-C", str(corpora["16 kHz"]), "."],
            "16 kHz",
            None,
        )
        for workers in args.workers:
            candidates[f"shard_corpus, 16 kHz wav -> wav, {plural(workers, 'worker')}"] = (
                shard_command(corpora["16 kHz"], tmp / "out", workers, "wav"),
                "16 kHz",
                tmp / "out",
            )

        seconds: dict[str, list[float]] = {name: [] for name in candidates}
        tool_seconds: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.repeats):
            for name, (command, _, output) in candidates.items():  # interleaved
                seconds[name].append(timed(command))
                if output is not None:
                    manifest = json.loads((output / "manifest.json").read_text())
                    assert manifest["counts"]["kept"] == args.clips, manifest["counts"]
                    tool_seconds[name].append(manifest["run"]["wall_seconds"])
                    shutil.rmtree(output)
                else:
                    (tmp / "out.tar").unlink()

    results = {}
    for name, (_, rate, _output) in candidates.items():
        floor = "tar, 44.1 kHz wav" if rate == "44.1 kHz" else "tar, 16 kHz wav"
        results[name] = {
            "source": rate,
            "source_audio_mb": audio_mb[rate],
            "clips_per_s": summarize([args.clips / s for s in seconds[name]]),
            "mb_per_s": summarize([audio_mb[rate] / s for s in seconds[name]]),
            "seconds": seconds[name],
            "tool_clips_per_s": summarize([args.clips / s for s in tool_seconds[name]]) if tool_seconds[name] else None,
        }
        results[name]["times_tar"] = statistics_ratio(seconds[name], seconds[floor])
        # the tool's own timer (no interpreter start-up) against tar's whole command
        results[name]["times_tar_after_startup"] = (
            statistics_ratio(tool_seconds[name], seconds[floor]) if tool_seconds[name] else None
        )
    report = {
        "clips": args.clips,
        "clip_seconds": [2, 8],
        "repeats": args.repeats,
        "results": results,
        "bench_seconds": time.perf_counter() - started,
    }
    out = save_results("shard", report)

    print(
        f"\nsharding {args.clips} clips of 2-8 s ({audio_mb['44.1 kHz']:.0f} MB at 44.1 kHz, {audio_mb['16 kHz']:.0f} "
        "MB at "
        f"16 kHz), {os.cpu_count()} CPUs, {args.repeats} repeats, median (min-max), whole command\n"
    )
    rows = []
    for name, r in results.items():
        tool = fmt(r["tool_clips_per_s"]) if r["tool_clips_per_s"] else "-"
        after = f"{r['times_tar_after_startup']:.1f}x" if r["times_tar_after_startup"] else "-"
        rows.append([name, fmt(r["clips_per_s"]), fmt(r["mb_per_s"]), tool, f"{r['times_tar']:.1f}x", after])
    print_table(
        [
            "candidate",
            "clips/s",
            "MB/s of source audio",
            "clips/s after start-up",
            "time vs tar",
            "after start-up vs tar",
        ],
        rows,
    )
    print(f"\nwrote {out} in {report['bench_seconds']:.0f} s")


def statistics_ratio(candidate: list[float], floor: list[float]) -> float:
    """Median time of the candidate over the median time of its tar floor."""
    import statistics

    return statistics.median(candidate) / statistics.median(floor)


if __name__ == "__main__":
    main()

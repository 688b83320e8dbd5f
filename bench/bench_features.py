"""Benchmark Whisper log-mel extraction: wdsbr.features against transformers.WhisperFeatureExtractor.

    python bench/bench_features.py [--repeats N] [--threads T] [--batch-size B]

Throughput is 30 s log-mel windows produced per second (one per clip, whatever its length). Candidates, all on
the same clips and batches, producing the same [B, 80, 3000] features:
  - wdsbr         log_mel_spectrogram(batch): STFT only over the frames the longest clip needs
  - hf-numpy      WhisperFeatureExtractor's numpy path (what it uses when torch is not installed)
  - hf-torch      WhisperFeatureExtractor's default path when torch is installed (device="cpu")
  - *-cuda        the same two torch ones on the GPU, when CUDA is available (wdsbr's output stays on the GPU,
                  HF copies its output back to numpy: that is what each API returns)
Cases: Common-Voice-like clips (uniform 2-8 s) and all-30 s clips. Candidates are interleaved within each
repetition so drift (thermal, other load) hits all of them alike. Before timing, every candidate's features of
the first batch are compared with the HF numpy path's (max abs difference, recorded).
Writes bench/results/features.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import WhisperFeatureExtractor
from transformers.models.whisper import feature_extraction_whisper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_results  # noqa: E402  (also puts the checkout on sys.path)

from wdsbr.audio import SAMPLE_RATE  # noqa: E402
from wdsbr.features import log_mel_spectrogram  # noqa: E402

N_MELS = 80


@contextlib.contextmanager
def hf_numpy_path():
    """HF picks its torch path whenever torch is importable; pretend it is not, as on a numpy-only install."""
    original = feature_extraction_whisper.is_torch_available
    feature_extraction_whisper.is_torch_available = lambda: False
    try:
        yield
    finally:
        feature_extraction_whisper.is_torch_available = original


def make_clips(n_clips: int, min_seconds: float, max_seconds: float, seed: int) -> list[np.ndarray]:
    """Noise clips with the given length distribution (the extractors' cost does not depend on content)."""
    rng = np.random.default_rng(seed)
    lengths = (rng.uniform(min_seconds, max_seconds, size=n_clips) * SAMPLE_RATE).astype(int)
    return [(0.1 * rng.standard_normal(length)).astype(np.float32) for length in lengths]


def build_candidates(extractor: WhisperFeatureExtractor) -> dict:
    """name -> function(batch of clips) that returns the features and has finished computing them."""

    def hf(batch, device="cpu"):
        return extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="np", device=device).input_features

    def hf_numpy(batch):
        with hf_numpy_path():
            return hf(batch)

    candidates = {
        "wdsbr": lambda batch: log_mel_spectrogram(batch, n_mels=N_MELS),
        "hf-numpy": hf_numpy,
        "hf-torch": hf,
    }
    if torch.cuda.is_available():

        def wdsbr_cuda(batch):
            features = log_mel_spectrogram(batch, n_mels=N_MELS, device="cuda")
            torch.cuda.synchronize()
            return features

        candidates["wdsbr-cuda"] = wdsbr_cuda
        candidates["hf-torch-cuda"] = lambda batch: hf(batch, device="cuda")
    return candidates


def as_numpy(features) -> np.ndarray:
    return features.float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)


def run_case(candidates: dict, clips: list[np.ndarray], batch_size: int, repeats: int) -> dict:
    batches = [clips[start : start + batch_size] for start in range(0, len(clips), batch_size)]
    # Warm-up (caches, allocator, CUDA context, lazy imports) and the equality check: every candidate's features
    # of the first batch against HF's numpy path, the reference implementation.
    outputs = {name: as_numpy(run(batches[0])) for name, run in candidates.items()}
    max_abs_diff = {name: float(np.abs(out - outputs["hf-numpy"]).max()) for name, out in outputs.items()}
    seconds = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():  # interleaved: one pass of each candidate per repetition
            start = time.perf_counter()
            for batch in batches:
                run(batch)
            seconds[name].append(time.perf_counter() - start)
    results = {}
    for name, times in seconds.items():
        rates = [len(clips) / t for t in times]
        results[name] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "seconds_per_pass": times,
            "max_abs_diff_vs_hf_numpy": max_abs_diff[name],
        }
    reference = results["hf-numpy"]["median"]
    for result in results.values():
        result["vs_hf_numpy"] = result["median"] / reference
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per candidate and case")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads value")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per extractor call, for every candidate")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch threads {torch.get_num_threads()} (os.cpu_count {os.cpu_count()}), "
        f"CUDA {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}"
    )

    extractor = WhisperFeatureExtractor(feature_size=N_MELS)
    candidates = build_candidates(extractor)
    # The numpy path costs ~30 ms a clip whatever its length, so the 30 s case uses fewer clips to stay short.
    cases = {
        "cv-like 2-8 s (256 clips)": make_clips(256, 2.0, 8.0, seed=0),
        "30 s (64 clips)": make_clips(64, 30.0, 30.0, seed=1),
    }
    started = time.perf_counter()
    report = {
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "n_mels": N_MELS,
        "unit": "30 s log-mel windows per second",
        "cases": {},
    }
    for case, clips in cases.items():
        report["cases"][case] = run_case(candidates, clips, args.batch_size, args.repeats)

    report["bench_seconds"] = time.perf_counter() - started
    out = save_results("features", report)

    print(f"\nbatch size {args.batch_size}, {args.repeats} repeats, windows/s (median [min-max])\n")
    print("| case | extractor | windows/s | min-max | vs hf-numpy | max abs diff vs hf-numpy |")
    print("|---|---|---:|---:|---:|---:|")
    for case, results in report["cases"].items():
        for name, r in results.items():
            print(
                f"| {case} | {name} | {r['median']:.1f} | {r['min']:.1f}-{r['max']:.1f} | {r['vs_hf_numpy']:.1f}x "
                f"| {r['max_abs_diff_vs_hf_numpy']:.1e} |"
            )
    print(f"\nwrote {out} in {report['bench_seconds']:.0f} s")


if __name__ == "__main__":
    main()

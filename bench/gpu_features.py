"""The GPU check's log-mel part (bench/gpu_check.py): bench_features.py's candidates and timing on the GPU machine.

log_mel      `bench/bench_features.py`'s candidates and timing (interleaved repeats, max abs difference
             against HF's numpy path) on 30 s clips in batches of 64: wdsbr on the CPU with all threads and
             with 1 (a DataLoader worker's), wdsbr on the GPU, HF's extractor (numpy, torch, torch on CUDA).
"""

from __future__ import annotations

from gpu_common import Check


def log_mel(check: Check) -> dict:
    """bench_features.py's candidates and `run_case` on 30 s clips, plus wdsbr with one thread."""
    import bench_features
    import torch
    from transformers import WhisperFeatureExtractor

    from wdsbr.features import log_mel_spectrogram

    candidates = bench_features.build_candidates(WhisperFeatureExtractor(feature_size=bench_features.N_MELS))

    def one_thread(batch):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return log_mel_spectrogram(batch, n_mels=bench_features.N_MELS)
        finally:
            torch.set_num_threads(threads)

    candidates["wdsbr-1-thread"] = one_thread
    clips = bench_features.make_clips(check.sizes.feature_clips, 30.0, 30.0, seed=1)
    results = bench_features.run_case(candidates, clips, batch_size=len(clips), repeats=check.sizes.feature_repeats)
    return {
        "unit": "30 s log-mel windows per second",
        "clips": len(clips),
        "batch_size": len(clips),
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }

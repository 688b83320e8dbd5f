"""The GPU check's loader part (bench/gpu_check.py), beside bench_loader.py.

loader       `make_train_loader` alone, workers = CPU cores, the small model's micro-batch: samples/s after
             every worker's first batch, against what train_small_fp16 consumes when nothing starves it (its
             model-only rate; target: ≥ 2×).
"""

from __future__ import annotations

import time

from gpu_common import Check, tokenizer_and_prompt


def loader_alone(check: Check) -> dict:
    """`make_train_loader` with nothing consuming it. The first batch of every worker (start-up, shuffle-buffer
    fill) is left out: the rate is the samples of the later batches over the time from the first round's last
    batch to the end. It is compared with what the small model's training consumes when nothing starves it (its
    model-only rate through training_step: a loader-fed rate cannot exceed the loader's own)."""
    from wdsbr.data import LoaderOptions, make_train_loader

    micro = check.micro_batch.get("small") or check.sizes.micro_batch or 64
    tokenizer, prompt = tokenizer_and_prompt(check, 80)
    n_batches = check.workers * check.sizes.loader_rounds
    loader = make_train_loader(
        check.shards,
        LoaderOptions(
            tokenizer,
            prompt,
            n_mels=80,
            micro_batch_size=micro,
            num_workers=check.workers,
            shuffle_buffer=check.sizes.shuffle_buffer,
            epoch_samples=micro * n_batches,
        ),
    )
    started, arrivals, samples = time.perf_counter(), [], []
    for batch in loader:
        arrivals.append(time.perf_counter())
        samples.append(len(batch["keys"]))
    first_round = check.workers
    rate = sum(samples[first_round:]) / (arrivals[-1] - arrivals[first_round - 1])
    return {
        "workers": check.workers,
        "micro_batch": micro,
        "batches": len(arrivals),
        "samples_per_s": rate,
        "samples_per_s_per_worker": rate / check.workers,
        "first_batch_s": arrivals[0] - started,
        **loader_ratio(check, rate),
    }


def loader_ratio(check: Check, rate: float) -> dict:
    """The loader's rate against the small model's training: what it consumes alone, and what it got fed."""
    precision = "fp16" if ("small", "fp16") in check.demand else "bf16"
    demand, fed = check.demand.get(("small", precision)), check.rates.get(("small", precision))
    return {
        "trainer_precision": precision if demand else None,
        "trainer_samples_per_s": demand,
        "vs_trainer": rate / demand if demand else None,
        "loader_fed_trainer_samples_per_s": fed,
    }

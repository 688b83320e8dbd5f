"""The GPU check's training parts (bench/gpu_check.py), beside bench_train.py: DeepSpeed in this process on one
device, fed by the real loader, and fp16's loss against bf16's.

  train_small_fp16, train_large_fp16, train_small_bf16, train_large_bf16
      DeepSpeed ZeRO-2 from the shipped configs/ds_zero2.json ("auto" filled by `resolve_ds_config`, as
      launch/train.py fills it), 1 GPU, in this process (a single-rank process group from RANK/WORLD_SIZE/
      MASTER_* set by gpu_check.py), `wdsbr.engine.training_step`. Micro-batch: two probe steps (4 and 8 samples)
      give the peak memory per sample; the largest multiple of 8 under 85 % of the GPU (at most 256 small / 128
      large) is used, the same for both precisions. Then `make_train_loader` (workers = CPU cores) feeds it: the
      first 3 steps are left out, then steps until 15 s have passed (5 to 40 steps), synchronised at both ends:
      samples/s, audio-seconds/s, the share of that time spent waiting for batches (the loader starving the
      GPU shows here), peak GPU memory, fp16 overflow (skipped) steps and the loss scale. Last, the model alone
      on one batch already on the GPU, through training_step and through a bare DeepSpeed step (no finite-loss
      check, so no all-reduce and no `.item()` host sync per micro-batch).
  fp16_vs_bf16_loss
      whisper-small, the same initial weights and one fixed batch of 16, 20 steps at lr 1e-4 in fp16 and in
      bf16: fp16's loss against bf16's at equal numbers of applied updates (an overflow step applies none),
      overflow steps, loss scale. Pass: every difference ≤ 5 % of bf16's loss (the noise of bf16's 8-bit
      mantissa is well under it), both losses fall by ≥ 10 %, and no step of the last quarter overflows (dynamic
      loss scaling has lowered the scale past the initial overflows).

The sizes above are the GPU run's (`gpu_common.GPU_SIZES`); the dry run's are tiny, and it has no fp16 parts.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from gpu_common import (
    Check,
    build_model,
    close_engine,
    ds_engine,
    free_memory,
    gpu_memory,
    make_batch,
    reset_peak_memory,
    rows_for,
    synchronize,
    tokenizer_and_prompt,
)

# of the GPU's memory the sized micro-batch may fill (the rest: fragmentation, the loader's pinned batches)
MEMORY_FRACTION = 0.85
PROBE_BATCHES = (4, 8)  # micro-batches of the two memory probe steps
LOSS_TOLERANCE = 0.05  # fp16 vs bf16: largest relative loss difference still "within noise"


# ----------------------------------------------------------------------------------------------- training


def train_deepspeed(check: Check, name: str, precision: str) -> dict:
    """DeepSpeed ZeRO-2 on one device fed by the real loader; see the module docstring. Out of memory at the sized
    micro-batch, the part is run once more at half of it (and later parts of this model use that)."""
    import torch

    try:
        return train_deepspeed_once(check, name, precision)
    except torch.cuda.OutOfMemoryError:
        micro = check.micro_batch.get(name)
        if not micro or micro <= PROBE_BATCHES[0]:
            raise
    # outside the except block: its traceback held the failed engine's memory
    free_memory()
    check.micro_batch[name] = max(PROBE_BATCHES[0], micro // 2)
    return {**train_deepspeed_once(check, name, precision), "note": f"micro-batch {micro} ran out of memory: halved"}


def train_deepspeed_once(check: Check, name: str, precision: str) -> dict:
    from wdsbr.engine import loss_scale

    sizes, spec = check.sizes, check.sizes.models[name]
    rows = rows_for(check, spec["n_mels"])
    micro = check.micro_batch.get(name) or sizes.micro_batch or sizes.max_micro_batch[name]
    engine, optimizer = ds_engine(check, lambda: build_model(check, name), precision, micro)
    try:
        start_token = engine.module.config.decoder_start_token_id
        result = {
            "model": name,
            "precision": precision,
            "optimizer": optimizer,
            "zero_stage": engine.zero_optimization_stage(),
            "parameters_millions": sum(p.numel() for p in engine.module.parameters()) / 1e6,
            "attention": engine.module.config._attn_implementation,
        }
        if name not in check.micro_batch:
            if check.cuda and sizes.micro_batch is None:
                micro, result["micro_batch_sizing"] = size_micro_batch(
                    engine, rows, sizes.max_micro_batch[name], start_token
                )
            check.micro_batch[name] = micro
        result["micro_batch"] = micro
        result.update(train_from_loader(check, engine, name, micro))
        result.update(model_only(check, engine, make_batch(rows, micro, start_token)))
        result["overflow_steps_total"] = engine.skipped_steps
        result["loss_scale_final"] = loss_scale(engine)
    finally:
        close_engine(engine)
    check.rates[(name, precision)] = result["samples_per_s"]
    check.demand[(name, precision)] = result["model_only_samples_per_s"]
    return result


def size_micro_batch(engine, rows: list[dict], cap: int, start_token: int) -> tuple[int, dict]:
    """Two real training steps of PROBE_BATCHES samples; their peak memory, extrapolated (`micro_batch_for`)."""
    import torch

    from wdsbr.engine import training_step

    peaks = {}
    for size in PROBE_BATCHES:
        reset_peak_memory()
        training_step(engine, make_batch(rows, size, start_token))
        synchronize()
        peaks[size] = torch.cuda.max_memory_allocated()
    parameters = sum(p.numel() for p in engine.module.parameters())
    # fp16 steps that overflowed skipped the update: Adam's two moments and ZeRO's fp32 gradient partition
    # (4 + 4 + 4 bytes a parameter) are allocated only by the first applied step
    pending = 12 * parameters if engine.skipped_steps >= len(PROBE_BATCHES) else 0
    total = torch.cuda.get_device_properties(engine.device).total_memory
    micro = micro_batch_for(peaks, total, pending, cap)
    return micro, {
        "probe_peak_allocated_gb": {str(size): peak / 1e9 for size, peak in peaks.items()},
        "not_yet_allocated_gb": pending / 1e9,
        "gpu_total_gb": total / 1e9,
        "memory_fraction": MEMORY_FRACTION,
        "cap": cap,
    }


def train_from_loader(check: Check, engine, name: str, micro: int) -> dict:
    """Steps fed by `make_train_loader`; the warm-up steps are left out; the window is synchronised at both ends."""
    from wdsbr.data import LoaderOptions, make_train_loader
    from wdsbr.engine import training_step

    sizes = check.sizes
    n_mels = sizes.models[name]["n_mels"]
    tokenizer, prompt = tokenizer_and_prompt(check, n_mels)
    warmup, (min_steps, max_steps) = sizes.warmup_steps, sizes.measured_steps
    loader = make_train_loader(
        check.shards,
        LoaderOptions(
            tokenizer,
            prompt,
            n_mels=n_mels,
            micro_batch_size=micro,
            num_workers=check.workers,
            shuffle_buffer=sizes.shuffle_buffer,
            epoch_samples=micro * (warmup + max_steps),
            decoder_start_token_id=engine.module.config.decoder_start_token_id,
        ),
    )
    reset_peak_memory()
    steps, window_start, batches = [], None, iter(loader)
    while len(steps) < warmup + max_steps:
        asked = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        got = time.perf_counter()
        skipped = engine.skipped_steps
        loss = training_step(engine, batch)
        steps.append(
            {
                "data_wait_s": got - asked,
                "samples": len(batch["keys"]),
                "audio_seconds": batch["audio_seconds"],
                "loss": loss,
                "overflow": engine.skipped_steps > skipped,
            }
        )
        if len(steps) == warmup:
            synchronize()
            window_start = time.perf_counter()
        now = time.perf_counter()
        if (
            window_start is not None
            and len(steps) - warmup >= min_steps
            and (now - window_start >= sizes.train_seconds or now >= check.deadline)
        ):
            break
    synchronize()
    if window_start is None or len(steps) <= warmup:
        raise RuntimeError(f"the loader gave {len(steps)} batches, fewer than the {warmup} warm-up steps + 1")
    window = time.perf_counter() - window_start
    del batches  # ends the DataLoader workers
    measured = steps[warmup:]
    losses = [float(step["loss"]) if step["loss"] is not None else math.nan for step in steps]
    samples = sum(step["samples"] for step in measured)
    return {
        "loader_workers": check.workers,
        "warmup_steps": warmup,
        "measured_steps": len(measured),
        "measured_seconds": window,
        "samples_per_s": samples / window,
        "audio_seconds_per_s": sum(step["audio_seconds"] for step in measured) / window,
        "data_wait_fraction": sum(step["data_wait_s"] for step in measured) / window,
        "overflow_steps_measured": sum(step["overflow"] for step in measured),
        "nonfinite_losses": sum(step["loss"] is None for step in steps),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        **gpu_memory(),
    }


def model_only(check: Check, engine, batch: dict) -> dict:
    """Samples/s on one batch already on the device (no loader): through wdsbr's training_step, and through a bare
    DeepSpeed step without its finite-loss check (one all-reduce and one `.item()` host sync per micro-batch)."""
    from wdsbr.engine import compute_dtype, training_step

    features = batch["input_features"].to(engine.device, dtype=compute_dtype(engine))
    labels = batch["labels"].to(engine.device)
    on_device = {"input_features": features, "labels": labels}

    def bare_step() -> None:
        loss = engine(input_features=features, labels=labels).loss
        engine.backward(loss)
        engine.step()

    warmup, timed = check.sizes.model_only_steps
    rates = {}
    for label, step in (
        ("model_only_samples_per_s", lambda: training_step(engine, on_device)),
        ("bare_deepspeed_step_samples_per_s", bare_step),
    ):
        for _ in range(warmup):
            step()
        synchronize()
        started = time.perf_counter()
        for _ in range(timed):
            step()
        synchronize()
        rates[label] = timed * len(batch["keys"]) / (time.perf_counter() - started)
    return rates


def micro_batch_for(
    peaks: dict[int, int],
    total_bytes: float,
    pending_bytes: float,
    cap: int,
    fraction: float = MEMORY_FRACTION,
    multiple: int = 8,
) -> int:
    """The largest micro-batch, a multiple of `multiple` and at most `cap`, whose peak memory, extrapolated
    linearly from two probe steps (micro-batch -> peak bytes), stays under `fraction` of `total_bytes` once
    `pending_bytes` (optimizer state the probes did not allocate yet) are added; never below the smaller probe."""
    (small, small_peak), (large, large_peak) = sorted(peaks.items())[:2]
    per_sample = (large_peak - small_peak) / (large - small)
    if per_sample <= 0:  # no measurable growth: memory is not what limits the batch
        return cap
    fixed = small_peak - per_sample * small
    fits = int((fraction * total_bytes - pending_bytes - fixed) / per_sample)
    return max(small, min(cap, fits // multiple * multiple))


# ------------------------------------------------------------------------------------------- fp16 vs bf16


def fp16_vs_bf16_loss(check: Check, precisions: tuple[str, str] = ("fp16", "bf16")) -> dict:
    """whisper-small from the same weights on one fixed batch, in each of `precisions` (the candidate, then the
    reference); see the module docstring."""
    from wdsbr.engine import loss_scale, training_step

    batch_size, steps = check.sizes.loss_check
    rows = rows_for(check, 80)
    result: dict[str, Any] = {
        "model": "small",
        "batch_size": batch_size,
        "steps": steps,
        "lr": 1e-4,
        "tolerance": LOSS_TOLERANCE,
    }
    curves = {}
    for precision in precisions:
        engine, optimizer = ds_engine(
            check,
            lambda: build_model(check, "small", seed=0),
            precision,
            batch_size,
            lr=1e-4,
            warmup_steps=1,
            max_steps=steps,
        )
        try:
            batch = make_batch(rows, batch_size, engine.module.config.decoder_start_token_id)
            curve, scales, overflows = [], [], []
            for _ in range(steps):
                applied, skipped = engine.global_steps - engine.skipped_steps, engine.skipped_steps
                loss = training_step(engine, batch)
                curve.append((applied, float(loss) if loss is not None else math.nan))
                scales.append(loss_scale(engine))
                overflows.append(engine.skipped_steps > skipped)
            curves[precision] = curve
            result[precision] = {
                "optimizer": optimizer,
                "losses": [loss for _, loss in curve],
                "loss_scales": scales,
                "overflow": overflows,
                "overflow_steps": sum(overflows),
                "applied_updates": engine.global_steps - engine.skipped_steps,
            }
        finally:
            close_engine(engine)
    candidate, reference = (result[precision] for precision in precisions)
    result.update(compare_losses(curves[precisions[0]], curves[precisions[1]]))
    result["losses_fall"] = all(run["losses"][-1] < 0.9 * run["losses"][0] for run in (candidate, reference))
    # dynamic loss scaling: the initial overflows lower the scale until steps apply again, and it stays there
    result["loss_scaling_recovers"] = not any(candidate["overflow"][-max(1, steps // 4) :]) and all(
        math.isfinite(loss) for loss in candidate["losses"]
    )
    difference = result["max_relative_difference"]
    result["pass"] = bool(
        difference is not None
        and difference <= LOSS_TOLERANCE
        and result["losses_fall"]
        and result["loss_scaling_recovers"]
    )
    return result


def compare_losses(fp16: list[tuple[int, float]], bf16: list[tuple[int, float]]) -> dict[str, Any]:
    """fp16's losses against bf16's at equal numbers of applied optimizer updates: each curve is a list of
    (updates applied before the step, loss). An fp16 step that overflowed applied none, so the steps after it
    are compared with bf16's steps before the same update, not with bf16's step of the same index."""
    reference = dict(bf16)
    differences = [
        abs(loss - reference[applied]) / abs(reference[applied])
        for applied, loss in fp16
        if applied in reference and reference[applied] != 0
    ]
    if not differences:
        return {"compared_steps": 0, "max_relative_difference": None, "mean_relative_difference": None}
    return {
        "compared_steps": len(differences),
        "max_relative_difference": max(differences),
        "mean_relative_difference": statistics.mean(differences),
    }

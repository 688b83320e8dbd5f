"""The GPU check's memory table (bench/gpu_check.py): what fits one GPU, for the model sizes Breton users pick.

memory_table
    For whisper-small, medium, large-v3-turbo and large-v3 (their real shapes, randomly initialised; on the dry
    run tiny ones), each of: full fine-tuning (configs/ds_zero2.json), full fine-tuning with the optimizer states
    offloaded to CPU (configs/ds_zero2_offload.json) and LoRA (`--lora 32` on q_proj, v_proj: the peft Whisper
    example's, wdsbr.lora), with and without gradient checkpointing; bf16, DeepSpeed ZeRO-2, one device. Two probe
    steps (4 and 8 samples) give the peak memory per sample and the largest multiple of 8 under 85 % of the GPU
    (at most 64) is run for `MEASURED_STEPS` steps: samples/s and the peak allocated memory at that micro-batch.
    A configuration whose probe runs out of memory is "OOM at 4". The dry run (CPU, tiny models, micro-batch 2,
    one step; an 80-mel and a 128-mel model) runs every mode end to end; its memory column is the process's peak RSS.
"""

from __future__ import annotations

import resource
import time

from gpu_common import (
    ROOT,
    Check,
    build_model,
    close_engine,
    ds_engine,
    gpu_memory,
    make_batch,
    reset_peak_memory,
    rows_for,
    synchronize,
)
from gpu_train import MEMORY_FRACTION, PROBE_BATCHES, size_micro_batch

# The shapes of openai/whisper-{small,medium,large-v3-turbo,large-v3} (their config.json).
MEMORY_MODELS = {
    "small": {"d_model": 768, "layers": 12, "heads": 12, "ffn": 3072, "n_mels": 80, "vocab_size": 51865},
    "medium": {"d_model": 1024, "layers": 24, "heads": 16, "ffn": 4096, "n_mels": 80, "vocab_size": 51865},
    "turbo": {
        "d_model": 1280, "layers": 32, "decoder_layers": 4, "heads": 20, "ffn": 5120, "n_mels": 128,
        "vocab_size": 51866,
    },
    "large-v3": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120, "n_mels": 128, "vocab_size": 51866},
}  # fmt: skip
TINY_MEMORY_MODELS = {  # the dry run: each mode on an 80-mel model and on a 128-mel one with a shorter decoder
    name: {"d_model": 64, "layers": 2, "decoder_layers": 1 if name == "turbo" else 2, "heads": 4, "ffn": 256,
           "n_mels": MEMORY_MODELS[name]["n_mels"], "vocab_size": None}
    for name in ("small", "turbo")
}  # fmt: skip
MODES = {
    "full": ROOT / "configs" / "ds_zero2.json",
    "offload": ROOT / "configs" / "ds_zero2_offload.json",
    "lora": ROOT / "configs" / "ds_zero2.json",
}
LORA = {"rank": 32, "alpha": 64.0, "dropout": 0.05, "targets": "q_proj,v_proj"}
MAX_MICRO_BATCH = 64
MEASURED_STEPS = 3


def memory_table(check: Check) -> dict:
    """Every (model, mode, checkpointing) row; see the module docstring."""
    import dataclasses

    models = MEMORY_MODELS if check.cuda else TINY_MEMORY_MODELS
    sized = dataclasses.replace(check.sizes, models={**check.sizes.models, **models})
    rows = []
    for name in models:
        for mode in MODES:
            for checkpointing in (False, True):
                if check.left() < 30:
                    rows.append({"model": name, "mode": mode, "checkpointing": checkpointing, "skipped": "budget"})
                    continue
                rows.append(measure(dataclasses.replace(check, sizes=sized), name, mode, checkpointing))
    return {"rows": rows, "lora": LORA, "memory_fraction": MEMORY_FRACTION, "measured_steps": MEASURED_STEPS}


def measure(check: Check, name: str, mode: str, checkpointing: bool) -> dict:
    import torch

    from wdsbr.engine import training_step
    from wdsbr.lora import apply_lora, parameter_counts
    from wdsbr.model import enable_checkpointing

    spec = check.sizes.models[name]
    row: dict = {"model": name, "mode": mode, "checkpointing": checkpointing}
    data = rows_for(check, spec["n_mels"])

    def build():
        model = build_model(check, name)
        model.config.use_cache = not checkpointing
        if checkpointing:
            enable_checkpointing(model)
        if mode == "lora":
            model = apply_lora(model, LORA["rank"], LORA["alpha"], LORA["dropout"], LORA["targets"])
        return model

    engine = None
    try:
        micro = PROBE_BATCHES[0] if check.cuda else 2
        engine, _ = ds_engine(check, build, "bf16", micro, ds_config=MODES[mode])
        start = engine.module.config.decoder_start_token_id
        row["trainable_params"], row["total_params"] = parameter_counts(engine.module)
        if check.cuda:  # the training parts' two probe steps, extrapolated
            micro, row["micro_batch_sizing"] = size_micro_batch(engine, data, MAX_MICRO_BATCH, start)
        reset_peak_memory()
        training_step(engine, make_batch(data, micro, start))  # warm-up at the measured size
        synchronize()
        began = time.perf_counter()
        steps = MEASURED_STEPS if check.cuda else 1
        for step in range(steps):
            training_step(engine, make_batch(data, micro, start, offset=step * micro))
        synchronize()
        seconds = time.perf_counter() - began
        row.update(micro_batch=micro, samples_per_s=steps * micro / seconds)
        row["peak_gb"] = gpu_memory()["peak_allocated_gb"] if check.cuda else None
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    except torch.cuda.OutOfMemoryError:
        row["oom"] = f"OOM at {PROBE_BATCHES[0]}"
    finally:
        if engine is not None:
            close_engine(engine)
    return row


def table_lines(result: dict) -> list[str]:
    """The Markdown table gpu_check.md shows."""
    lines = [
        "| model | mode | checkpointing | trainable / total params (M) | micro-batch | samples/s | peak GPU GB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in result.get("rows", []):
        if "skipped" in row or "oom" in row:
            why = row.get("oom") or f"skipped: {row['skipped']}"
            lines.append(f"| {row['model']} | {row['mode']} | {row['checkpointing']} | | {why} | | |")
            continue
        params = f"{row['trainable_params'] / 1e6:.1f} / {row['total_params'] / 1e6:.1f}"
        peak = f"{row['peak_gb']:.1f}" if row.get("peak_gb") is not None else f"(RSS {row['peak_rss_gb']:.1f})"
        lines.append(
            f"| {row['model']} | {row['mode']} | {row['checkpointing']} | {params} | {row['micro_batch']} | "
            f"{row['samples_per_s']:.1f} | {peak} |"
        )
    return lines

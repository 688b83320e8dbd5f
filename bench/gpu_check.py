"""The GPU check: one short run that measures, side by side, what wdsbr does on one CUDA GPU.

    bash bench/gpu_check.sh --wheels wheels/           # on the GPU machine: installs what it lacks, then this
    python bench/gpu_check.py [--budget-seconds 480] [--results-dir bench/results] [--parts NAME,NAME]
    python bench/gpu_check.py --dry-run                # CPU, tiny sizes: every part end to end (about 2 min here)

Nothing is downloaded. Two randomly-initialised Whisper models are built with the real checkpoints' shapes
(`whisper-small`: d_model 768, 12+12 layers, 12 heads, ffn 3072, 80 mels, vocabulary 51865; `large-v3`: 1280,
32+32, 20, 5120, 128 mels, 51866), with the tokenizer `wdsbr.model.build_tiny_whisper` builds locally (its
ids sit at the bottom of the vocabulary; the ids above it are never labels and are never generated, since
`wdsbr.evaluation.no_timestamps` masks everything from the first timestamp on). Clips are
`bench/common.write_corpus`'s speech-like noise (20-30 s: full 30 s windows, the loader's worst case),
written to shards with the project's own writer; the loader wraps around them (`epoch_samples`).

Parts, in the order they run; each writes its rows into one dict, a failure is recorded (error string) and
the others still run; a part that would start past the time budget is "skipped: time budget", and the JSON
and Markdown are rewritten after every part, so a run cut short still leaves what it measured:

  train_small_fp16, train_large_fp16, train_small_bf16, train_large_bf16
      DeepSpeed ZeRO-2 from the shipped configs/ds_zero2.json ("auto" filled by `resolve_ds_config`, as
      launch/train.py fills it), 1 GPU, in this process (a single-rank process group from RANK/WORLD_SIZE/
      MASTER_* set here), `wdsbr.engine.training_step`. Micro-batch: two probe steps (4 and 8 samples) give the
      peak memory per sample; the largest multiple of 8 under 85 % of the GPU (at most 256 small / 128 large)
      is used, the same for both precisions. Then `make_train_loader` (workers = CPU cores) feeds it: the first
      3 steps are left out, then steps until 15 s have passed (5 to 40 steps), synchronised at both ends:
      samples/s, audio-seconds/s, the share of that time spent waiting for batches (the loader starving the
      GPU shows here), peak GPU memory, fp16 overflow (skipped) steps and the loss scale. Last, the model alone
      on one batch already on the GPU, through training_step and through a bare DeepSpeed step (no finite-loss
      check, so no all-reduce and no `.item()` host sync per micro-batch).
  loader       `make_train_loader` alone, workers = CPU cores, the small model's micro-batch: samples/s after
               every worker's first batch, against what train_small_fp16 consumes when nothing starves it (its
               model-only rate; target: ≥ 2×).
  generate_small, generate_large, generate_small_compiled
               `wdsbr.evaluation.validation_step` (teacher-forced loss + greedy generate() + decode) on batches
               of 64 in the trainer's validation dtype, exactly 32 new tokens per utterance (min = max new
               tokens: a random model's length would be noise); dynamic cache and static cache (no compile);
               the compiled variant is transformers' auto-compile of the static-cache decoder on CUDA, whose
               first batch (the compilation) is reported apart.
  log_mel      `bench/bench_features.py`'s candidates and timing (interleaved repeats, max abs difference
               against HF's numpy path) on 30 s clips in batches of 64: wdsbr on the CPU with all threads and
               with 1 (a DataLoader worker's), wdsbr on the GPU, HF's extractor (numpy, torch, torch on CUDA).
  hf_trainer_small, hf_trainer_large
               `Seq2SeqTrainer` with bench/hf_train.py's settings (torch AdamW, clipping 1.0, linear schedule)
               and the blog's collator on the same model and clips (features computed once, as the recipe's
               `map` does before training), fp16 autocast on CUDA, same micro-batch (halved once on OOM):
               samples/s from synchronised step-end times after 3 warm-up steps, and wdsbr's ratio to it.
  fp16_vs_bf16_loss
               whisper-small, the same initial weights and one fixed batch of 16, 20 steps at lr 1e-4 in fp16
               and in bf16: fp16's loss against bf16's at equal numbers of applied updates (an overflow step
               applies none), overflow steps, loss scale. Pass: every difference ≤ 5 % of bf16's loss (the
               noise of bf16's 8-bit mantissa is well under it), both losses fall by ≥ 10 %, and no step of the
               last quarter overflows (dynamic loss scaling has lowered the scale past the initial overflows).

Targets (judged only on CUDA): train small ≥ 190 samples/s, large-v3 ≥ 30, loader ≥ 2× the small trainer,
generate small ≥ 300 utterances/s. The dry run: tiny models (d_model 64, 2+2 layers), a handful of 1-1.5 s
clips and steps, CPU, bf16; the fp16 parts and the compiled generate say "skipped: needs CUDA".
Writes RESULTS_DIR/gpu_check.json and RESULTS_DIR/gpu_check.md; exit 1 when a part failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import io
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never wait for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (also puts the checkout on sys.path)
from common import ROOT, DataCollatorSpeechSeq2SeqWithPadding, free_port, print_table, save_results, write_corpus  # noqa: E402

import wdsbr  # noqa: E402  (the standard library only: wdsbr.REQUIRED)

# torch, transformers, deepspeed and wdsbr's modules are imported where used, after main() has checked that they are
# installed: on the GPU machine a missing carried wheel is one line naming the fix, not a traceback.

DS_CONFIG = ROOT / "configs" / "ds_zero2.json"
LANGUAGE = "br"
MEMORY_FRACTION = (
    0.85  # of the GPU's memory the sized micro-batch may fill (the rest: fragmentation, the loader's pinned batches)
)
PROBE_BATCHES = (4, 8)  # micro-batches of the two memory probe steps
LOSS_TOLERANCE = 0.05  # fp16 vs bf16: largest relative loss difference still "within noise"
TARGETS = {
    "train small samples/s": 190.0,
    "train large-v3 samples/s": 30.0,
    "loader / trainer": 2.0,
    "generate small utterances/s": 300.0,
}

# The shapes of openai/whisper-small and openai/whisper-large-v3 (their config.json), randomly initialised.
MODELS = {
    "small": {"d_model": 768, "layers": 12, "heads": 12, "ffn": 3072, "n_mels": 80, "vocab_size": 51865},
    "large-v3": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120, "n_mels": 128, "vocab_size": 51866},
}
TINY_MODELS = {  # --dry-run: the same two mel sizes, the tokenizer's own vocabulary
    "small": {"d_model": 64, "layers": 2, "heads": 4, "ffn": 256, "n_mels": 80, "vocab_size": None},
    "large-v3": {"d_model": 64, "layers": 2, "heads": 4, "ffn": 256, "n_mels": 128, "vocab_size": None},
}


@dataclass(frozen=True)
class Sizes:
    """Everything the run's length depends on: the GPU run's sizes, and the dry run's tiny ones."""

    models: dict[str, dict]
    clips: int  # unique clips in the shards (the loaders wrap around them)
    clip_seconds: tuple[float, float]
    samples_per_shard: int
    warmup_steps: int  # training steps left out of every rate: allocator, autotuning, loader start-up
    measured_steps: tuple[int, int]  # (min, max) measured training steps
    train_seconds: float  # measuring stops after this, once the minimum of steps is done
    model_only_steps: tuple[int, int]  # (warm-up, timed) steps of each model-only variant
    micro_batch: int | None  # None: sized to fill GPU memory
    max_micro_batch: dict[str, int]
    loader_rounds: int  # loader alone: batches per worker
    shuffle_buffer: int
    generate_batch: int
    generate_batches: int
    generate_tokens: int
    hf_steps: tuple[int, int]  # (warm-up, measured)
    hf_workers: int | None  # the HF Trainer's DataLoader workers (None: min(4, loader workers))
    loss_check: tuple[int, int]  # (batch, steps)
    feature_clips: int
    feature_repeats: int
    budget_seconds: float
    need_seconds: dict[str, float] = field(default_factory=dict)  # a part starts only with this much time left


GPU_SIZES = Sizes(
    models=MODELS,
    clips=128,
    clip_seconds=(20.0, 30.0),
    samples_per_shard=32,
    warmup_steps=3,
    measured_steps=(5, 40),
    train_seconds=15.0,
    model_only_steps=(1, 4),
    micro_batch=None,
    max_micro_batch={"small": 256, "large-v3": 128},
    loader_rounds=3,
    shuffle_buffer=64,
    generate_batch=64,
    generate_batches=4,
    generate_tokens=32,
    hf_steps=(3, 10),
    hf_workers=None,
    loss_check=(16, 20),
    feature_clips=64,
    feature_repeats=3,
    budget_seconds=480.0,
    need_seconds={
        "train_small_fp16": 40,
        "train_small_bf16": 35,
        "train_large_fp16": 70,
        "train_large_bf16": 60,
        "loader": 15,
        "generate_small": 20,
        "generate_large": 30,
        "generate_small_compiled": 120,
        "log_mel": 15,
        "hf_trainer_small": 35,
        "hf_trainer_large": 60,
        "fp16_vs_bf16_loss": 35,
    },
)
DRY_SIZES = Sizes(
    models=TINY_MODELS,
    clips=6,
    clip_seconds=(1.0, 1.5),
    samples_per_shard=3,
    warmup_steps=1,
    measured_steps=(1, 1),
    train_seconds=0.0,
    model_only_steps=(0, 1),
    micro_batch=2,
    max_micro_batch={"small": 2, "large-v3": 2},
    loader_rounds=2,
    shuffle_buffer=4,
    generate_batch=2,
    generate_batches=1,
    generate_tokens=4,
    hf_steps=(1, 1),
    hf_workers=0,
    loss_check=(4, 4),  # 0: no worker forked from a process that runs threads (a CI run must not hang)
    feature_clips=4,
    feature_repeats=1,
    budget_seconds=600.0,
)


class BudgetExceeded(BaseException):
    """The global time budget ran out while a part was running (a BaseException: no `except Exception` on the way,
    in this script or a library, may swallow it)."""


@dataclass
class Check:
    """What the parts share: sizes, device, the shards and tokenizers made once, and what earlier parts found."""

    sizes: Sizes
    tmp: Path
    results_dir: Path
    device: Any  # torch.device
    workers: int
    started: float  # time.perf_counter() at the start
    deadline: float  # time.perf_counter() at which the budget runs out
    adam: str  # "fused" (DeepSpeed's FusedAdam, JIT-compiled) or "torch" (torch AdamW via torch_adam)
    report: dict
    shards: Path | None = None
    mean_clip_seconds: float = 0.0
    model_dirs: dict[int, Path] = field(default_factory=dict)  # n_mels -> tiny model folder (tokenizer, configs)
    processors: dict[int, Any] = field(default_factory=dict)
    cached_rows: dict[int, list[dict]] = field(default_factory=dict)
    micro_batch: dict[str, int] = field(default_factory=dict)  # model -> micro-batch the first training part sized
    rates: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, precision) -> DeepSpeed samples/s
    demand: dict[tuple[str, str], float] = field(default_factory=dict)  # the same, the model alone (batch on the GPU)
    distributed: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.perf_counter()


# ------------------------------------------------------------------------------------------------ helpers


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_memory() -> dict[str, float | None]:
    """Peak allocated and reserved GPU memory (GB) since the last reset; None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    return {
        "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9,
    }


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        synchronize()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def without_rank_environment():
    """Hide RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* for a while: with them, accelerate (under the HF Trainer) would take
    this single process for one rank of a distributed job and wrap the model in DDP."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def ensure_distributed(check: Check) -> None:
    """A single-rank process group (NCCL on CUDA, gloo on CPU) for DeepSpeed, as the launcher would make for one
    GPU: RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT are set by main()."""
    from wdsbr.engine import init_distributed

    if not check.distributed:
        init_distributed(timeout_minutes=5)
        check.distributed = True


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


def make_batch(rows: list[dict], size: int, decoder_start_token_id: int, offset: int = 0) -> dict:
    """A training/validation batch of `size` precomputed rows (cycling from `offset`), as the collator makes it."""
    import torch

    from wdsbr.collate import pad_labels

    picked = [rows[(offset + index) % len(rows)] for index in range(size)]
    return {
        "input_features": torch.stack([row["features"] for row in picked]),
        "labels": pad_labels([row["labels"] for row in picked], decoder_start_token_id),
        "keys": [row["key"] for row in picked],
        "texts": [row["text"] for row in picked],
    }


def tokenizer_and_prompt(check: Check, n_mels: int):
    tokenizer = check.processors[n_mels].tokenizer
    return tokenizer, list(tokenizer.prefix_tokens)


def rows_for(check: Check, n_mels: int) -> list[dict]:
    """Every clip of the shards once, through `make_eval_loader` (the validation stream): its log-mel features
    (CPU, float32), labels with the prompt, key and transcript. Made once per mel size, sorted by key."""
    if n_mels not in check.cached_rows:
        from wdsbr.data import LoaderOptions, make_eval_loader

        tokenizer, prompt = tokenizer_and_prompt(check, n_mels)
        rows = []
        loader = make_eval_loader(
            check.shards,
            LoaderOptions(
                tokenizer,
                prompt,
                n_mels=n_mels,
                micro_batch_size=8,
                num_workers=check.workers,
                decoder_start_token_id=prompt[0],
            ),
        )
        for batch in loader:
            for index, key in enumerate(batch["keys"]):
                labels = batch["labels"][index]
                rows.append(
                    {
                        "key": key,
                        "text": batch["texts"][index],
                        "features": batch["input_features"][index].clone(),
                        "labels": [prompt[0], *labels[labels != -100].tolist()],
                    }
                )
        check.cached_rows[n_mels] = sorted(rows, key=lambda row: row["key"])
    return check.cached_rows[n_mels]


def build_model(check: Check, name: str, seed: int = 0):
    """A randomly-initialised Whisper with `name`'s shape, made directly on the device (a large-v3 initialised on
    the CPU would take longer than training it here), with the local tokenizer's ids and generation config."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    spec = check.sizes.models[name]
    folder = check.model_dirs[spec["n_mels"]]
    config = WhisperConfig.from_pretrained(folder)
    config.update(
        {
            "d_model": spec["d_model"],
            "encoder_layers": spec["layers"],
            "decoder_layers": spec["layers"],
            "encoder_attention_heads": spec["heads"],
            "decoder_attention_heads": spec["heads"],
            "encoder_ffn_dim": spec["ffn"],
            "decoder_ffn_dim": spec["ffn"],
            "vocab_size": max(config.vocab_size, spec["vocab_size"] or 0),
        }
    )
    torch.manual_seed(seed)
    with torch.device(check.device):
        model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def ds_engine(
    check: Check,
    build: Callable,
    precision: str,
    micro_batch: int,
    *,
    lr: float = 1e-5,
    warmup_steps: int = 1,
    max_steps: int = 100_000,
):
    """A DeepSpeed engine over `build()`'s model from the shipped configs/ds_zero2.json, its "auto" values filled by
    `resolve_ds_config` as launch/train.py fills them (a long schedule: the rate is constant after warm-up).
    The optimizer is the config's, DeepSpeed's FusedAdam on CUDA, JIT-compiled on first use (it needs a CUDA
    toolkit); where it cannot be built, torch's AdamW through DeepSpeed's `torch_adam`, and the reason is
    recorded in the report. Returns (engine, optimizer name)."""
    from wdsbr.engine import build_engine, device_type, load_ds_config, resolve_ds_config

    ensure_distributed(check)
    settings = {
        "micro_batch_size": micro_batch,
        "grad_accum_steps": 1,
        "lr": lr,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "warmup_steps": warmup_steps,
        "max_steps": max_steps,
        "lr_schedule": "linear",
        "precision": precision,
    }
    config, effective, _ = resolve_ds_config(
        load_ds_config(DS_CONFIG), settings, {"precision"}, world_size=1, device_type=device_type()
    )
    assert effective["precision"] == precision, (precision, effective["precision"])
    if check.adam == "fused":
        config["optimizer"]["params"].pop("torch_adam", None)  # the config's own optimizer: FusedAdam
        started = time.perf_counter()
        model = build()
        try:
            engine = build_engine(model, config)
            check.report["optimizer"].setdefault("first_engine_build_s", time.perf_counter() - started)
            return engine, "DeepSpeed FusedAdam"
        except Exception as error:  # noqa: BLE001 - recorded; every later engine uses torch's AdamW
            check.adam = "torch"
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            check.report["optimizer"]["fused_adam_engine_error"] = f"{type(error).__name__}: {first_line}"
            del model
            free_memory()
    config["optimizer"]["params"]["torch_adam"] = True
    return build_engine(build(), config), "torch AdamW (DeepSpeed torch_adam)"


def close_engine(engine) -> None:
    if hasattr(engine, "destroy"):
        engine.destroy()
    free_memory()


# -------------------------------------------------------------------------------------------------- parts


def setup(check: Check) -> dict:
    """Clips -> shards (the project's writer, everything in train), and a local tokenizer per mel size."""
    from wdsbr.corpus import open_corpus
    from wdsbr.model import build_tiny_whisper, load_processor
    from wdsbr.shards import ShardOptions, shard_corpus

    sizes = check.sizes
    low, high = sizes.clip_seconds
    clips = write_corpus(check.tmp / "corpus", sizes.clips, min_seconds=low, max_seconds=high)
    options = ShardOptions(
        val_fraction=0, test_fraction=0, samples_per_shard=sizes.samples_per_shard, workers=check.workers
    )
    shard_corpus(open_corpus(check.tmp / "corpus"), check.tmp / "shards", options, progress=False)
    check.shards = check.tmp / "shards" / "train"
    check.mean_clip_seconds = statistics.mean(clip["seconds"] for clip in clips)
    texts = [clip["text"] for clip in clips]
    for n_mels in sorted({spec["n_mels"] for spec in sizes.models.values()}):
        folder = build_tiny_whisper(check.tmp / f"tokenizer-{n_mels}", texts, n_mels=n_mels, vocab_size=1000)
        check.model_dirs[n_mels] = folder
        check.processors[n_mels] = load_processor(str(folder), language=LANGUAGE)
    return {
        "clips": len(clips),
        "mean_clip_seconds": check.mean_clip_seconds,
        "shards": len(list(check.shards.glob("*.tar"))),
        "tokenizer_size": len(check.processors[80].tokenizer),
    }


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


GENERATE_VARIANTS = {
    "dynamic": {},
    "static": {"cache_implementation": "static", "disable_compile": True},
    "static+compile": {"cache_implementation": "static"},  # transformers compiles the decoder step on CUDA
}


def generate(check: Check, name: str, variants: tuple[str, ...]) -> dict:
    """`validation_step` per batch, greedy, exactly `generate_tokens` new tokens an utterance; see the docstring."""
    from wdsbr.evaluation import generate_kwargs, validation_step

    sizes, spec = check.sizes, check.sizes.models[name]
    rows = rows_for(check, spec["n_mels"])
    tokenizer, _ = tokenizer_and_prompt(check, spec["n_mels"])
    dtype = validation_dtype(check)
    model = build_model(check, name).to(dtype).eval()
    start_token = model.config.decoder_start_token_id
    batches = [
        make_batch(rows, sizes.generate_batch, start_token, offset=index * sizes.generate_batch)
        for index in range(sizes.generate_batches)
    ]
    base = {
        **generate_kwargs(LANGUAGE, num_beams=1, max_new_tokens=sizes.generate_tokens),
        "min_new_tokens": sizes.generate_tokens,
    }
    result = {
        "model": name,
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": sizes.generate_batch,
        "new_tokens_per_utterance": sizes.generate_tokens,
        "variants": {},
    }
    try:
        for variant in variants:
            kwargs = {**base, **GENERATE_VARIANTS[variant]}
            try:
                started = time.perf_counter()
                validation_step(model, batches[0], tokenizer, kwargs, dtype, check.device)  # warm-up (compilation)
                first = time.perf_counter() - started
                started, utterances = time.perf_counter(), 0
                for batch in batches:
                    utterances += len(validation_step(model, batch, tokenizer, kwargs, dtype, check.device)[2])
                seconds = time.perf_counter() - started
            except Exception as error:  # noqa: BLE001 - recorded; the other variants still run
                result["variants"][variant] = {"error": f"{type(error).__name__}: {error}"}
                continue
            result["variants"][variant] = {
                "utterances_per_s": utterances / seconds,
                "new_tokens_per_s": utterances * sizes.generate_tokens / seconds,
                "first_batch_s": first,
                "timed_batches": len(batches),
            }
    finally:
        del model
        free_memory()
    failed = [variant for variant, row in result["variants"].items() if "error" in row]
    if failed:  # the part failed, with what the other variants measured
        result.update(status="error", error="; ".join(f"{v}: {result['variants'][v]['error']}" for v in failed))
    return result


def validation_dtype(check: Check):
    """The dtype validation runs in: the engine's compute dtype (fp16 on CUDA per the shipped config, bf16 on CPU)."""
    import torch

    return torch.float16 if check.cuda else torch.bfloat16


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


class Cycled:
    """The recipe's mapped rows (input_features + labels) repeated to `length` items: one epoch is the whole run."""

    def __init__(self, rows: list[dict], length: int):
        self.rows, self.length = rows, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.rows[index % len(self.rows)]


def hf_trainer(check: Check, name: str) -> dict:
    """Seq2SeqTrainer on the same model shape and clips; see the module docstring."""
    import torch

    precision = "fp16" if check.cuda else "bf16"
    micro = check.micro_batch.get(name) or check.sizes.micro_batch or check.sizes.max_micro_batch[name] // 4
    try:
        result = run_hf_trainer(check, name, precision, micro)
    except torch.cuda.OutOfMemoryError:
        result = None
    if result is None:  # outside the except block: its traceback held the failed run's memory
        free_memory()
        result = {
            **run_hf_trainer(check, name, precision, max(1, micro // 2)),
            "note": f"micro-batch {micro} ran out of memory: halved",
        }
    ours = check.rates.get((name, precision))
    result["wdsbr_samples_per_s"] = ours
    result["wdsbr_vs_hf_trainer"] = ours / result["samples_per_s"] if ours else None
    return result


def run_hf_trainer(check: Check, name: str, precision: str, micro: int) -> dict:
    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    class StepEnds(TrainerCallback):
        """time.perf_counter() at the end of every optimizer step, once the device has finished it."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            self.times.append(time.perf_counter())

    spec = check.sizes.models[name]
    processor = check.processors[spec["n_mels"]]
    warmup, measured = check.sizes.hf_steps
    workers = min(4, check.workers) if check.sizes.hf_workers is None else check.sizes.hf_workers
    rows = [
        {"input_features": row["features"].numpy(), "labels": row["labels"]} for row in rows_for(check, spec["n_mels"])
    ]
    model = build_model(check, name)
    collator = DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id)
    timer = StepEnds()
    with without_rank_environment():
        arguments = Seq2SeqTrainingArguments(  # bench/hf_train.py's settings
            output_dir=str(check.tmp / f"hf-{name}"),
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=1,
            learning_rate=1e-5,
            warmup_steps=1,
            max_steps=warmup + measured,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            adam_beta1=0.9,
            adam_beta2=0.999,
            adam_epsilon=1e-8,
            fp16=precision == "fp16",
            bf16=precision == "bf16",
            eval_strategy="no",
            save_strategy="no",
            logging_steps=warmup + measured,
            report_to="none",
            dataloader_num_workers=workers,
            dataloader_pin_memory=check.cuda,
            seed=0,
            disable_tqdm=True,
            use_cpu=not check.cuda,
        )
        trainer = Seq2SeqTrainer(
            model=model,
            args=arguments,
            train_dataset=Cycled(rows, micro * (warmup + measured)),
            data_collator=collator,
            processing_class=processor,
            callbacks=[timer],
        )
        reset_peak_memory()
        try:
            outcome = trainer.train()
        finally:
            del trainer, model
            free_memory()
    times = timer.times
    window = times[-1] - times[warmup - 1]
    samples = micro * (len(times) - warmup)
    return {
        "model": name,
        "precision": precision,
        "micro_batch": micro,
        "optimizer": "torch AdamW (adamw_torch)",
        "warmup_steps": warmup,
        "measured_steps": len(times) - warmup,
        "samples_per_s": samples / window,
        "audio_seconds_per_s": samples * check.mean_clip_seconds / window,
        "train_loss": outcome.training_loss,
        "dataloader_workers": workers,
        **gpu_memory(),
        "torch_threads": torch.get_num_threads(),
    }


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


# Priority order: if the budget runs short, what is skipped is the least important.
# (name, function, arguments, needs CUDA)
PARTS = [
    ("train_small_fp16", train_deepspeed, {"name": "small", "precision": "fp16"}, True),
    ("loader", loader_alone, {}, False),
    ("generate_small", generate, {"name": "small", "variants": ("dynamic", "static")}, False),
    ("train_large_fp16", train_deepspeed, {"name": "large-v3", "precision": "fp16"}, True),
    ("train_small_bf16", train_deepspeed, {"name": "small", "precision": "bf16"}, False),
    ("train_large_bf16", train_deepspeed, {"name": "large-v3", "precision": "bf16"}, False),
    ("log_mel", log_mel, {}, False),
    ("hf_trainer_small", hf_trainer, {"name": "small"}, False),
    ("fp16_vs_bf16_loss", fp16_vs_bf16_loss, {}, True),
    ("hf_trainer_large", hf_trainer, {"name": "large-v3"}, False),
    ("generate_small_compiled", generate, {"name": "small", "variants": ("static+compile",)}, True),
    ("generate_large", generate, {"name": "large-v3", "variants": ("dynamic", "static")}, False),
]


# ------------------------------------------------------------------------------------------------- report


def judge(report: dict) -> list[dict]:
    """The issue's targets against what was measured; `pass` is None when not on CUDA (not judged)."""
    parts, on_gpu = report["parts"], report["environment"]["cuda"] is not None
    checks = []

    def add(what: str, part: str, value: float | None, target: float | None, passed: bool | None = None) -> None:
        if value is None and passed is None:
            return
        verdict = passed if passed is not None else value >= target
        checks.append(
            {"check": what, "part": part, "value": value, "target": target, "pass": verdict if on_gpu else None}
        )

    for part, rows in parts.items():
        if rows.get("status") != "ok" and not part.startswith("generate"):  # a generate part keeps its good variants
            continue
        if part.startswith("train_"):
            target = TARGETS["train small samples/s" if rows["model"] == "small" else "train large-v3 samples/s"]
            add(f"train {rows['model']} {rows['precision']} samples/s", part, rows["samples_per_s"], target)
        elif part == "loader":
            add("loader / trainer", part, rows["vs_trainer"], TARGETS["loader / trainer"])
        elif part.startswith("generate_small"):
            for variant, row in rows.get("variants", {}).items():
                if "error" not in row:
                    add(
                        f"generate small ({variant}) utterances/s",
                        part,
                        row["utterances_per_s"],
                        TARGETS["generate small utterances/s"],
                    )
        elif part == "fp16_vs_bf16_loss":
            add(
                "fp16 loss within noise of bf16 (max relative difference)",
                part,
                rows["max_relative_difference"],
                LOSS_TOLERANCE,
                rows["pass"],
            )
    return checks


def short(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary(name: str, rows: dict) -> str:
    """One line of what a part found, for the Markdown table."""
    if rows.get("status") != "ok" and not (name.startswith("generate") and rows.get("variants")):
        return rows.get("error", "").splitlines()[0][:160] if rows.get("error") else ""
    if name.startswith("train_"):
        return (
            f"{short(rows['samples_per_s'])} samples/s, {short(rows['audio_seconds_per_s'], 0)} audio s/s, batch "
            f"{rows['micro_batch']}, "
            f"data wait {100 * rows['data_wait_fraction']:.0f} %, peak {short(rows['peak_allocated_gb'])} GB, "
            f"overflow steps {rows['overflow_steps_measured']}, model alone {short(rows['model_only_samples_per_s'])} "
            f"(bare step {short(rows['bare_deepspeed_step_samples_per_s'])}), {rows['optimizer']}"
        )
    if name == "loader":
        return (
            f"{short(rows['samples_per_s'])} samples/s with {rows['workers']} workers, batch {rows['micro_batch']}; "
            f"{short(rows['vs_trainer'], 2)}× what the small model trains on alone"
        )
    if name.startswith("generate"):
        return "; ".join(
            f"{variant}: {short(row['utterances_per_s'])} utt/s (first batch {short(row['first_batch_s'])} s)"
            if "error" not in row
            else f"{variant}: {row['error'][:120]}"
            for variant, row in rows["variants"].items()
        )
    if name == "log_mel":
        return (
            "; ".join(f"{candidate} {short(row['median'])}" for candidate, row in rows["results"].items())
            + " windows/s"
        )
    if name.startswith("hf_trainer"):
        return (
            f"{short(rows['samples_per_s'])} samples/s, batch {rows['micro_batch']}, {rows['precision']}; "
            f"wdsbr {short(rows['wdsbr_vs_hf_trainer'], 2)}×"
        )
    if name == "fp16_vs_bf16_loss":
        return (
            f"max relative difference {short(rows['max_relative_difference'], 4)} over {rows['compared_steps']} steps, "
            f"fp16 overflow steps {rows['fp16']['overflow_steps']}, losses fall: {rows['losses_fall']}, "
            f"scaling recovers: {rows['loss_scaling_recovers']}, pass: {rows['pass']}"
        )
    return ", ".join(f"{key} {short(value)}" for key, value in rows.items() if key not in ("status", "seconds"))


def markdown(report: dict) -> str:
    environment = report["environment"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print("# wdsbr GPU check\n")
        print(
            f"{environment['cuda'] or 'CPU only'}; torch {environment['torch']} (CUDA {environment['torch_cuda']}), "
            f"transformers {environment['transformers']}, deepspeed {environment['deepspeed']}; "
            f"{environment['cpu_cores']} CPU cores; {'dry run, ' if report['dry_run'] else ''}"
            f"{report['elapsed_s']:.0f} s of a {report['budget_seconds']:.0f} s budget"
            f"{'' if report['finished'] else ' (not finished)'}.\n"
        )
        print("## Targets\n")
        print_table(
            ["check", "measured", "target", "pass"],
            [
                [
                    c["check"],
                    short(c["value"], 2),
                    short(c["target"], 2),
                    {True: "yes", False: "**no**", None: "not judged (no GPU)"}[c["pass"]],
                ]
                for c in report["targets"]
            ],
            "lrrl",
        )
        print("\n## Parts\n")
        print_table(
            ["part", "status", "s", "result"],
            [
                [name, rows["status"], short(rows.get("seconds"), 0), summary(name, rows)]
                for name, rows in report["parts"].items()
            ],
            "llrl",
        )
    return out.getvalue()


def environment(check: Check) -> dict:
    import torch
    import transformers
    from torch.utils import cpp_extension

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    return {
        "cuda": torch.cuda.get_device_name() if cuda else None,
        "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 1e9 if cuda else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": transformers.__version__,
        "deepspeed": version("deepspeed"),
        "webdataset": version("webdataset"),
        "accelerate": version("accelerate"),
        "cuda_toolkit": cpp_extension.CUDA_HOME,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loader_workers": check.workers,
        "python": sys.version.split()[0],
        # DataLoader workers hand batches over in shared memory: a container's default 64 MB is far too little
        "dev_shm_gb": shutil.disk_usage("/dev/shm").total / 1e9 if os.path.isdir("/dev/shm") else None,
    }


def save(check: Check) -> None:
    """(Re)write the JSON (common.save_results, which adds the machine) and the Markdown."""
    report = check.report
    report["elapsed_s"] = time.perf_counter() - check.started
    loader = report["parts"].get("loader", {})
    if loader.get("status") == "ok" and loader["trainer_samples_per_s"] is None:  # the trainer ran after the loader
        loader.update(loader_ratio(check, loader["samples_per_s"]))
    report["targets"] = judge(report)
    save_results("gpu_check", report)
    (check.results_dir / "gpu_check.md").write_text(markdown(report), encoding="utf-8")


def run_part(check: Check, name: str, function: Callable, arguments: dict, needs_cuda: bool) -> dict:
    """One part: its rows, or why it did not run, or the error that stopped it; memory freed after it."""
    if needs_cuda and not check.cuda:
        return {"status": "skipped: needs CUDA"}
    if check.left() < check.sizes.need_seconds.get(name, 0):
        return {"status": "skipped: time budget"}
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, max(0.1, check.left()))  # the budget interrupts a part that overruns it
    try:
        rows = {"status": "ok", **function(check, **arguments)}
    except BudgetExceeded:
        rows = {"status": "skipped: time budget", "error": "the time budget ran out during this part"}
    except Exception as error:  # noqa: BLE001 - a failed part is recorded and the others still run
        rows = {
            "status": "error",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-4000:],
        }
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        free_memory()
    rows["seconds"] = time.perf_counter() - started
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models and sizes: the whole check end to end")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="no part starts, and a running one stops, after this (default 480; dry run 600)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=common.RESULTS, help="where gpu_check.json and gpu_check.md go"
    )
    parser.add_argument(
        "--parts",
        default=None,
        help="comma-separated part names to run (default: all); the others are 'skipped: not selected'",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default: the CPU cores; dry run: at most 2)"
    )
    parser.add_argument(
        "--optimizer",
        choices=["auto", "fused", "torch"],
        default="auto",
        help="DeepSpeed's FusedAdam (JIT-compiled, needs a CUDA toolkit) or torch AdamW; auto: FusedAdam "
        "when a CUDA toolkit is found",
    )
    args = parser.parse_args()
    started = time.perf_counter()

    missing = [name for name in (*wdsbr.REQUIRED, "deepspeed", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: {sys.executable} has no {', '.join(missing)}: bash bench/gpu_check.sh --wheels DIR installs them "
            "(the script's header says how to make DIR)",
            file=sys.stderr,
        )
        return 2
    import torch
    import transformers
    from torch.utils import cpp_extension

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA device (torch.cuda.is_available() is False): run with --dry-run on a CPU", file=sys.stderr
        )
        return 2
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers or (min(2, cores) if args.dry_run else cores)
    # one rank of a one-GPU job, as the deepspeed launcher would set it
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    adam = (
        args.optimizer
        if args.optimizer != "auto"
        else "fused"
        if torch.cuda.is_available() and cpp_extension.CUDA_HOME
        else "torch"
    )
    budget = args.budget_seconds or sizes.budget_seconds
    args.results_dir.mkdir(parents=True, exist_ok=True)
    common.RESULTS = args.results_dir  # save_results writes RESULTS/NAME.json

    def out_of_time(signum, frame):
        raise BudgetExceeded()

    signal.signal(signal.SIGALRM, out_of_time)
    selected = set(args.parts.split(",")) if args.parts else None
    unknown = (selected or set()) - {name for name, *_ in PARTS}
    if unknown:
        parser.error(
            f"--parts: unknown {', '.join(sorted(unknown))}; the parts are {', '.join(name for name, *_ in PARTS)}"
        )

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        report = {
            "dry_run": args.dry_run,
            "budget_seconds": budget,
            "finished": False,
            "optimizer": {"choice": adam, "cuda_toolkit": cpp_extension.CUDA_HOME},
            "parts": {},
        }
        check = Check(
            sizes=sizes,
            tmp=Path(tmp),
            results_dir=args.results_dir,
            device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
            workers=workers,
            started=started,
            deadline=started + budget,
            adam=adam,
            report=report,
        )
        report["environment"] = environment(check)
        if adam == "torch" and torch.cuda.is_available() and args.optimizer == "auto":
            report["optimizer"]["note"] = (
                "no CUDA toolkit (CUDA_HOME/nvcc) found: DeepSpeed's FusedAdam cannot be JIT-compiled here"
            )
        report["sizes"] = {key: value for key, value in vars(sizes).items() if key != "need_seconds"}
        report["setup"] = run_part(check, "setup", setup, {}, False)
        print(f"[{time.perf_counter() - started:5.0f} s] setup: {report['setup']['status']}", flush=True)
        for name, function, arguments, needs_cuda in PARTS:
            if report["setup"]["status"] != "ok":
                rows = {"status": "skipped: setup failed"}
            elif selected is not None and name not in selected:
                rows = {"status": "skipped: not selected"}
            else:
                rows = run_part(check, name, function, arguments, needs_cuda)
            report["parts"][name] = rows
            print(
                f"[{time.perf_counter() - started:5.0f} s] {name}: {rows['status']} {summary(name, rows)}", flush=True
            )
            save(check)
        report["finished"] = True
        save(check)
    failed = [name for name, rows in {"setup": report["setup"], **report["parts"]}.items() if rows["status"] == "error"]
    print(
        f"wrote {args.results_dir / 'gpu_check.json'} and {args.results_dir / 'gpu_check.md'} in "
        f"{time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed or report["setup"]["status"] != "ok" else 0


if __name__ == "__main__":
    sys.exit(main())

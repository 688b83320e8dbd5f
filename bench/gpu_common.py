"""What the GPU check's parts (bench/gpu_check.py) share: the sizes of a run (the GPU's and the dry run's tiny
ones), the `Check` that carries the shards, tokenizers and what earlier parts found, and the helpers: GPU memory,
a single-rank process group, batches of precomputed rows, randomly-initialised Whisper models with the real
checkpoints' shapes, a DeepSpeed engine from the shipped config; and `setup`, which makes the shards and
tokenizers once, before the parts.

torch, transformers, deepspeed and wdsbr's modules are imported where used: importing this module (gpu_check.py's
`--help`, its check of what is installed) imports none of them.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, write_corpus

DS_CONFIG = ROOT / "configs" / "ds_zero2.json"
LANGUAGE = "br"

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
        "memory_table": 240,
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
    hf_workers=0,  # 0: no worker forked from a process that runs threads (a CI run must not hang)
    loss_check=(4, 4),
    feature_clips=4,
    feature_repeats=1,
    budget_seconds=600.0,
)


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
            "decoder_layers": spec.get("decoder_layers", spec["layers"]),
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
    ds_config: Path = DS_CONFIG,
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
        load_ds_config(ds_config), settings, {"precision"}, world_size=1, device_type=device_type()
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


# ------------------------------------------------------------------------------------- setup, environment


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


def environment(check: Check) -> dict:
    """The device, the versions that matter and the machine's limits, for the report."""
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

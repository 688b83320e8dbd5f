"""DeepSpeed: the JSON config with its "auto" values filled from the CLI, the engine, the training step and
checkpoints. The only module that imports `deepspeed`.

"auto" anywhere in the JSON means "take it from the command line". A value the JSON fixes is used as it is;
when a CLI option given explicitly contradicts it, that is an error, not a silent pick.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from wdsbr import dist
from wdsbr.options import TrainOptions

AUTO = "auto"
SCHEDULERS = {"linear": "WarmupDecayLR", "cosine": "WarmupCosineLR"}
CHECKPOINT_PREFIX = "step-"
FP16_ON_CPU = "fp16 is not supported on CPU: training in bf16 instead (--precision fp32 for full precision)"
NO_FUSED_ADAM = (
    "DeepSpeed's FusedAdam is not prebuilt and cannot be built here (no CUDA toolkit: nvcc under "
    "CUDA_HOME): torch's AdamW instead"
)
FP16_ON_CPU_WITHOUT_BF16 = (
    "fp16 is not supported on CPU: training in fp32 instead (this CPU has no native bf16, "
    "AVX-512 BF16 or AMX, and emulated bf16 runs many times slower than fp32)"
)


def cpu_has_native_bf16() -> bool:
    """True where this CPU computes bf16 natively (AVX-512 BF16 or AMX, as oneDNN reports it). Without it bf16 is
    emulated: a tiny.en training step in bf16 autocast took 14× as long as in fp32 on a 2-core AVX2 EPYC."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fused_adam_buildable() -> bool:
    """DeepSpeed's FusedAdam is usable here: prebuilt into this DeepSpeed install, or buildable at the engine's
    start, which needs a CUDA toolkit (nvcc under torch's CUDA_HOME). A pip-installed CUDA torch has none."""
    try:
        from deepspeed.git_version_info import installed_ops  # only asked on a GPU machine
    except ImportError:
        installed_ops = {}
    if installed_ops.get("fused_adam"):
        return True
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and (Path(CUDA_HOME) / "bin" / "nvcc").exists()


def cpu_precision_for_fp16(native_bf16: bool | None = None) -> str:
    """What fp16 becomes on a CPU, which cannot train in it: bf16 where the CPU computes bf16 natively, else fp32."""
    return "bf16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "fp32"


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the value and the fix."""


def load_ds_config(path: str | Path) -> dict[str, Any]:
    """Read the DeepSpeed JSON; a missing file or bad JSON is one clear ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"--deepspeed {path}: cannot read it ({error.strerror or error})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--deepspeed {path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"--deepspeed {path}: expected a JSON object at the top level")
    return config


def _get(config: dict, path: str, default: Any = None) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _set(config: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


# JSON path -> (setting, --option) that fills it when "auto", and each setting's option: declared with the options.
_FILLED = TrainOptions.deepspeed_fills()
_FLAG = TrainOptions.deepspeed_flags()


def resolve_ds_config(
    config: dict[str, Any],
    settings: dict[str, Any],
    explicit: set[str],
    *,
    world_size: int,
    device_type: str,
    native_bf16: bool | None = None,
    fused_adam: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Fill the JSON's "auto" values from `settings` (the CLI values; `explicit` names those the user typed).
    fp16 on CPU becomes bf16, or fp32 on a CPU without native bf16 (`native_bf16`; None: this CPU's). Adam is
    torch's on CPU, and on a GPU where DeepSpeed's FusedAdam cannot be had (`fused_adam`; None: asked here).

    Returns (DeepSpeed config, effective settings, notes to print). Raises one ConfigError listing every problem.
    """
    config, effective, problems, notes = copy.deepcopy(config), dict(settings), [], []

    def take(path: str, name: str, option: str) -> None:
        fixed = _get(config, path, AUTO)
        if fixed == AUTO:
            _set(config, path, settings[name])
        elif name in explicit and fixed != settings[name]:
            problems.append(
                f"the DeepSpeed config fixes {path}={fixed} but {option} {settings[name]} contradicts it: "
                f'drop {option} or set "{path}": "auto" in the JSON'
            )
        else:
            effective[name] = fixed

    for path, (name, option) in _FILLED.items():
        if path.startswith("optimizer.") and "optimizer" not in config:
            continue
        take(path, name, option)

    # The global batch: micro × accumulation × ranks. A fixed train_batch_size must agree with it.
    micro, accum = effective["micro_batch_size"], effective["grad_accum_steps"]
    for name in ("micro_batch_size", "grad_accum_steps"):
        if not isinstance(effective[name], int) or effective[name] < 1:
            problems.append(f"{_FLAG[name]} {effective[name]}: must be a positive whole number")
    if not problems:
        fixed_global = _get(config, "train_batch_size", AUTO)
        if fixed_global != AUTO and fixed_global != micro * accum * world_size:
            problems.append(
                f"the DeepSpeed config fixes train_batch_size={fixed_global}, which is not "
                f"{_FLAG['micro_batch_size']} {micro} × {_FLAG['grad_accum_steps']} {accum} × {world_size} ranks = "
                f"{micro * accum * world_size}: "
                f'set it to "auto" or choose a batch size that divides it'
            )
        config["train_batch_size"] = micro * accum * world_size
    effective["global_batch_size"] = micro * accum * world_size

    # Precision: the JSON may fix it; fp16 falls back to bf16 where the device cannot do it (CPU), to fp32 where
    # the CPU has no native bf16 either.
    fixed = {name: _get(config, f"{name}.enabled", AUTO) for name in ("fp16", "bf16")}
    json_precision = (
        "fp16"
        if fixed["fp16"] is True
        else "bf16"
        if fixed["bf16"] is True
        else "fp32"
        if fixed["fp16"] is False and fixed["bf16"] is False
        else None
    )
    precision = settings["precision"]
    if json_precision is not None:
        if "precision" in explicit and precision != json_precision:
            problems.append(
                f"the DeepSpeed config enables {json_precision} but {_FLAG['precision']} {precision} contradicts it: "
                f'drop {_FLAG["precision"]} or set fp16.enabled and bf16.enabled to "auto"'
            )
        precision = json_precision
    if precision == "fp16" and device_type == "cpu":
        precision = cpu_precision_for_fp16(native_bf16)
        notes.append(FP16_ON_CPU if precision == "bf16" else FP16_ON_CPU_WITHOUT_BF16)
    _set(config, "fp16.enabled", precision == "fp16")
    _set(config, "bf16.enabled", precision == "bf16")
    effective["precision"] = precision

    # Optimizer: DeepSpeed's fused AdamW needs a compiled CUDA op; on CPU, or on a GPU machine that can neither
    # load a prebuilt one nor build it (no CUDA toolkit), use torch's.
    if _get(config, "optimizer.type", "").lower() in ("adam", "adamw") and not _get(
        config, "optimizer.params.torch_adam", False
    ):
        if device_type == "cpu":
            _set(config, "optimizer.params.torch_adam", True)
        elif not (fused_adam_buildable() if fused_adam is None else fused_adam):
            _set(config, "optimizer.params.torch_adam", True)
            notes.append(NO_FUSED_ADAM)

    # Scheduler: warm-up then linear or cosine decay to max_steps.
    if "scheduler" in config:
        _resolve_scheduler(config, effective, explicit, problems)

    if problems:
        raise ConfigError("; ".join(problems))
    return config, effective, notes


def _resolve_scheduler(config: dict, effective: dict, explicit: set[str], problems: list[str]) -> None:
    wanted = SCHEDULERS[effective["lr_schedule"]]
    fixed_type = _get(config, "scheduler.type", AUTO)
    if fixed_type == AUTO:
        config["scheduler"]["type"] = wanted
    elif "lr_schedule" in explicit and fixed_type != wanted:
        problems.append(
            f"the DeepSpeed config fixes scheduler.type={fixed_type} but --lr-schedule "
            f'{effective["lr_schedule"]} asks for {wanted}: drop the option or set the type to "auto"'
        )
        return
    scheduler_type = config["scheduler"]["type"]
    warmup = max(1, int(effective["warmup_steps"]))  # DeepSpeed wants a positive warm-up
    if scheduler_type == "WarmupCosineLR":
        filled = {
            "total_num_steps": effective["max_steps"],
            "warmup_num_steps": warmup,
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.0,
            "warmup_type": "linear",
        }
    else:
        filled = {
            "total_num_steps": effective["max_steps"],
            "warmup_num_steps": warmup,
            "warmup_min_lr": 0.0,
            "warmup_max_lr": effective["lr"],
            "warmup_type": "linear",
        }
    params = config["scheduler"].get("params", AUTO)
    if params == AUTO:
        config["scheduler"]["params"] = filled
    elif isinstance(params, dict):
        for key, value in params.items():
            if value == AUTO:
                params[key] = filled.get(key, value)


# ------------------------------------------------------------------------------------------------- engine


class _KnownNoise(logging.Filter):
    """DeepSpeed warnings that say nothing about the run: its own scheduler asks itself for a learning rate while
    it is being built. Dropped by exact message; every other warning passes."""

    MESSAGES = ("Attempting to get learning rate from scheduler before it has started",)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.MESSAGES


def init_distributed(timeout_minutes: float = 30.0) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); a rank that dies makes the others fail within
    `timeout_minutes` instead of hanging."""
    if not torch.cuda.is_available():  # the accelerator DeepSpeed would pick, without its warning on every rank
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if dist.local_rank() == 0 and not _cpu_comm_op_built():
            print("compiling DeepSpeed's CPU communication op (first run only, about a minute)", flush=True)
    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # DeepSpeed's INFO lines drown the run's own output
    logger.addFilter(_KnownNoise())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes), verbose=False)
    if backend == "gloo":
        torch.distributed.barrier()  # collective: every rank has mapped every rank's shared buffer by now
        with contextlib.suppress(FileNotFoundError):  # none where the ranks are on several nodes
            os.unlink(shm_buffer(dist.rank()))


def shm_buffer(rank: int) -> str:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for `rank` (66 MB, in /dev/shm) and never removes:
    every multi-rank CPU run used to leave one per rank behind, until the machine ran out of memory. Once every
    rank has mapped them (at init), each rank unlinks its own: the mappings live on until the processes exit, and
    the memory is freed with the last one, however they exit."""
    address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"


def _cpu_comm_op_built() -> bool:
    """Whether torch's extension cache holds DeepSpeed's compiled CPU communication op (deepspeed_shm_comm)."""
    from torch.utils import cpp_extension

    try:
        folder = Path(cpp_extension._get_build_directory("deepspeed_shm_comm", verbose=False))
    except (AttributeError, OSError, RuntimeError):  # a torch without the helper: say nothing rather than guess
        return True
    return any(folder.glob("*.so"))


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_engine(model: torch.nn.Module, ds_config: dict[str, Any]):
    """The DeepSpeed engine over the trainable parameters (ZeRO stage and precision from the config), loading
    its checkpoints with `torch.load(weights_only=True)`."""
    import deepspeed
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    parameters = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=parameters, config=ds_config)
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:  # never resume through a loader we did not check
        raise ConfigError(
            f"DeepSpeed's checkpoint engine is {type(engine.checkpoint_engine).__name__}, not the "
            "TorchCheckpointEngine wdsbr makes load weights only: remove checkpoint-engine settings from "
            "the DeepSpeed config, or use a DeepSpeed version where the engine is TorchCheckpointEngine"
        )
    # DeepSpeed's own loads with weights_only=False
    engine.checkpoint_engine = _weights_only_checkpoint_engine(TorchCheckpointEngine)(engine._config)
    return engine


def _weights_only_checkpoint_engine(base: type) -> type:
    """DeepSpeed's torch checkpoint engine, loading with weights_only=True: a tampered checkpoint cannot run code.
    Its files hold tensors, plain containers and these few DeepSpeed classes, allowed by name."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler]

    class WeightsOnlyCheckpointEngine(base):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(allowed):
                try:
                    return torch.load(path, map_location=map_location, weights_only=True)
                except pickle.UnpicklingError as error:
                    error.wdsbr_path = path  # which file: load_checkpoint names it in its one-line error
                    raise

    return WeightsOnlyCheckpointEngine


def compute_dtype(engine) -> torch.dtype:
    if engine.fp16_enabled():
        return torch.float16
    if engine.bfloat16_enabled():
        return torch.bfloat16
    return torch.float32


def training_step(engine, batch: dict) -> torch.Tensor | None:
    """One micro-batch: forward, backward, and (at an accumulation boundary) the optimizer step.
    DeepSpeed scales the loss for accumulation and, with fp16, skips overflowing steps.

    A NaN or infinite loss on any rank (a poisoned batch, a bf16/fp32 blow-up DeepSpeed does not catch) skips
    this micro-batch on every rank before its gradients touch the weights, and returns None for the caller to
    count. Deciding together costs one scalar all-reduce per micro-batch."""
    features = batch["input_features"].to(engine.device, dtype=compute_dtype(engine), non_blocking=True)
    labels = batch["labels"].to(engine.device, non_blocking=True)
    prompted = (
        {"decoder_input_ids": batch["decoder_input_ids"].to(engine.device, non_blocking=True)}
        if "decoder_input_ids" in batch
        else {}
    )  # --prev-text: inputs the model cannot shift from the labels
    loss = engine(input_features=features, labels=labels, **prompted).loss
    finite = torch.isfinite(loss.detach()).float()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)  # collective: all ranks
    if not finite.item():
        return None
    engine.backward(loss)
    engine.step()
    return loss.detach()


def loss_scale(engine) -> float | None:
    """The fp16 dynamic loss scale (None in bf16/fp32)."""
    if not engine.fp16_enabled():
        return None
    scale = getattr(engine.optimizer, "loss_scale", None)
    return float(scale) if scale is not None else None


# ----------------------------------------------------------------------------------------------- checkpoints


def checkpoint_tag(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def latest_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The tag DeepSpeed's `latest` file names, if that checkpoint folder exists."""
    latest = Path(checkpoint_dir) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text(encoding="utf-8").strip()
    return tag if (Path(checkpoint_dir) / tag).is_dir() else None


def save_checkpoint(engine, checkpoint_dir: str | Path, step: int, trainer_state: dict, keep: int) -> str:
    """Collective: all ranks. DeepSpeed checkpoint (model, optimizer, scheduler, loss scale) + trainer state;
    then rank 0 keeps only the last `keep` checkpoints."""
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={"trainer_state": trainer_state})
    if dist.is_main():
        (Path(checkpoint_dir) / tag / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    torch.distributed.barrier()  # every rank has written its shard before old checkpoints go
    if dist.is_main() and keep > 0:
        tags = sorted(p.name for p in Path(checkpoint_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(Path(checkpoint_dir) / old, ignore_errors=True)
    return tag


def checkpoint_problem(folder: Path, world_size: int) -> str | None:
    """Why a checkpoint folder cannot be resumed (a missing, empty or corrupt file, named), or None.

    torch.save writes zip archives with a CRC per member: testzip() reads every byte and finds a truncated or
    bit-flipped file without unpickling anything."""
    model_files = sorted(folder.glob("mp_rank_*_model_states.pt"))
    optim_files = sorted(folder.glob("*zero_pp_rank_*_optim_states.pt"))
    if not (folder / "trainer_state.json").is_file():
        return f"{folder / 'trainer_state.json'} is missing"
    if not model_files:
        return f"{folder}: no mp_rank_*_model_states.pt"
    if len(optim_files) != world_size:
        return f"{folder}: {len(optim_files)} optimizer state files for {world_size} ranks"
    for file in model_files + optim_files:
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as error:
            return f"{file} is unreadable ({error})"
        if bad is not None:
            return f"{file} is corrupt (member {bad} fails its CRC)"
    return None


def load_checkpoint(engine, checkpoint_dir: str | Path) -> dict:
    """Collective: all ranks. Restore the newest intact checkpoint (the one `latest` names, else an older one,
    saying which file is broken); returns the trainer state saved with it. Never a silent fresh start."""
    checkpoint_dir = Path(checkpoint_dir)
    newest = latest_checkpoint(checkpoint_dir)
    tags = sorted((p.name for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), reverse=True)
    if newest in tags:  # `latest` first, then older ones
        tags.remove(newest)
        tags.insert(0, newest)
    choice = [None]
    if dist.is_main():
        problems = []
        for tag in tags:
            problem = checkpoint_problem(checkpoint_dir / tag, dist.world_size())
            if problem is None:
                choice = [(tag, problems)]
                break
            problems.append(problem)
        else:
            choice = [(None, problems)]
    torch.distributed.broadcast_object_list(choice, src=0)  # collective: rank 0 picks the checkpoint for all
    tag, problems = choice[0]
    for problem in problems:
        logging.getLogger(__name__).warning("--resume: skipping a damaged checkpoint: %s", problem)
    if tag is None:
        raise ConfigError(
            f"--resume: no intact checkpoint in {checkpoint_dir}: " + ("; ".join(problems) or "none found")
        )
    try:
        _, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    except pickle.UnpicklingError as error:  # weights_only refused a global: the file holds more than weights
        refused = getattr(error, "wdsbr_path", checkpoint_dir / tag)
        raise ConfigError(
            f"--resume: {refused}: refused, it holds a pickle that is not only weights (nothing of it was "
            f"run; {str(error).strip().splitlines()[-1][:200]})"
        ) from None
    if not client_state or "trainer_state" not in client_state:
        raise ConfigError(f"--resume: {checkpoint_dir / tag} has no trainer state")
    return client_state["trainer_state"]


def environment_summary() -> dict[str, Any]:
    import deepspeed

    return {
        "deepspeed": deepspeed.__version__,
        "torch": torch.__version__,
        "device": device_type(),
        "world_size": dist.world_size(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }

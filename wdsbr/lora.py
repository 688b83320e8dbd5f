"""LoRA adapters (peft) for fine-tuning a big Whisper on one small GPU: which layers get them, how many parameters
train, and the merged plain Whisper that `best/` holds (CTranslate2 refuses a PeftModel; pipeline(), tools/export.py
and faster-whisper need nothing new).

The base weights are frozen: only the adapters' A and B matrices train (DeepSpeed's optimizer sees only them).
`merged_state_dict` folds each adapter into its layer (W + B·A·α/r, computed in fp32) and names the tensors as the
plain model names them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

ADAPTER_FOLDER = "adapter"  # best/adapter/: the adapter alone (peft's save_pretrained)


def parse_targets(text: str) -> list[str]:
    targets = [name.strip() for name in text.split(",") if name.strip()]
    if not targets:
        raise ValueError(f"--lora-targets {text!r}: name one or more linear layers, e.g. q_proj,v_proj")
    return targets


def check_lora(rank: int, alpha: float, dropout: float, targets: str) -> list[str]:
    """Every problem of the --lora options (empty when they are fine)."""
    problems = []
    if rank < 0:
        problems.append(f"--lora {rank}: give a rank ≥ 1 (0: full fine-tuning)")
    if rank and alpha <= 0:
        problems.append(f"--lora-alpha {alpha:g}: must be above 0")
    if rank and not 0 <= dropout < 1:
        problems.append(f"--lora-dropout {dropout:g}: must be in [0, 1)")
    try:
        parse_targets(targets)
    except ValueError as error:
        problems.append(str(error))
    return problems


def apply_lora(model, rank: int, alpha: float, dropout: float, targets: str):
    """The model with LoRA adapters on the `targets` linear layers (every layer whose name ends so), base frozen."""
    from peft import LoraConfig, get_peft_model

    names = parse_targets(targets)
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(
            f"--lora-targets: no linear layer named {', '.join(missing)} in this model "
            f"(it has {', '.join(sorted(present))})"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    return get_peft_model(model, config)


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The plain Whisper's weights (fp32, CPU) with every adapter folded into its layer: what `merge_and_unload`
    would give, without touching the model that goes on training."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach().to("cpu", torch.float32)
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).detach().to("cpu", torch.float32)
            merged[f"{name}.weight"] = weight
    state = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        state[plain] = merged.get(plain, tensor.detach().to("cpu", torch.float32))
    return state


def save_adapter(model, folder: Path) -> None:
    model.save_pretrained(str(folder))


def describe(model) -> dict[str, int | float | Iterable[str]]:
    """What the metrics rows and the model card say about what trained."""
    trainable, total = parameter_counts(model)
    row: dict = {"trainable_params": trainable, "total_params": total}
    if is_lora(model):
        config = model.peft_config["default"]
        row.update(lora_rank=config.r, lora_alpha=config.lora_alpha, lora_targets=sorted(config.target_modules))
    return row

"""DeepSpeed config resolution ("auto" from the CLI, contradictions refused, precision fallback) and
checkpoint bookkeeping. The engine itself runs in tests/test_train.py under the real launcher."""

from __future__ import annotations

import json

import pytest

from wdsbr.engine import (
    FP16_ON_CPU,
    FP16_ON_CPU_WITHOUT_BF16,
    NO_FUSED_ADAM,
    ConfigError,
    checkpoint_tag,
    cpu_has_native_bf16,
    cpu_precision_for_fp16,
    latest_checkpoint,
    load_ds_config,
    resolve_ds_config,
)

SETTINGS = {
    "micro_batch_size": 4,
    "grad_accum_steps": 2,
    "lr": 1e-4,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "warmup_steps": 10,
    "max_steps": 100,
    "lr_schedule": "linear",
    "precision": "fp16",
}


def shipped_config() -> dict:
    return load_ds_config("configs/ds_zero2.json")


def resolve(config=None, explicit=(), device_type="cuda", world_size=2, native_bf16=True, fused_adam=True, **settings):
    return resolve_ds_config(
        config if config is not None else shipped_config(),
        {**SETTINGS, **settings},
        set(explicit),
        world_size=world_size,
        device_type=device_type,
        native_bf16=native_bf16,
        fused_adam=fused_adam,
    )


def test_the_shipped_config_is_zero2_fp16_with_everything_else_from_the_cli():
    config, effective, notes = resolve()
    assert config["zero_optimization"]["stage"] == 2
    assert config["fp16"]["enabled"] is True and config["bf16"]["enabled"] is False
    assert config["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 4 * 2 * 2 == effective["global_batch_size"]
    assert config["gradient_clipping"] == 1.0
    assert config["optimizer"]["params"]["lr"] == 1e-4 and config["optimizer"]["params"]["weight_decay"] == 0.01
    assert config["scheduler"] == {
        "type": "WarmupDecayLR",
        "params": {
            "total_num_steps": 100,
            "warmup_num_steps": 10,
            "warmup_min_lr": 0.0,
            "warmup_max_lr": 1e-4,
            "warmup_type": "linear",
        },
    }
    assert "torch_adam" not in config["optimizer"]["params"]  # DeepSpeed's fused AdamW on CUDA
    assert notes == []
    assert "auto" not in json.dumps(config)


def test_cosine_schedule():
    config, _, _ = resolve(lr_schedule="cosine", explicit={"lr_schedule"})
    assert config["scheduler"]["type"] == "WarmupCosineLR"
    assert config["scheduler"]["params"]["total_num_steps"] == 100


def test_fp16_on_cpu_says_so_and_runs_bf16_with_torch_adamw():
    config, effective, notes = resolve(device_type="cpu")
    assert notes == [FP16_ON_CPU]
    assert effective["precision"] == "bf16"
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["optimizer"]["params"]["torch_adam"] is True


def test_fp16_on_a_cpu_without_native_bf16_says_so_and_runs_fp32():
    config, effective, notes = resolve(device_type="cpu", native_bf16=False)
    assert notes == [FP16_ON_CPU_WITHOUT_BF16] and effective["precision"] == "fp32"
    assert config["bf16"]["enabled"] is False and config["fp16"]["enabled"] is False
    assert cpu_precision_for_fp16() == ("bf16" if cpu_has_native_bf16() else "fp32")  # this machine's own answer


def test_a_gpu_machine_without_deepspeeds_fused_adam_says_so_and_uses_torchs():
    config, effective, notes = resolve(fused_adam=False)
    assert config["optimizer"]["params"]["torch_adam"] is True and notes == [NO_FUSED_ADAM]
    assert config["fp16"]["enabled"] is True  # nothing else changes


def test_fp32_when_asked():
    config, effective, notes = resolve(device_type="cpu", precision="fp32", explicit={"precision"})
    assert (config["fp16"]["enabled"], config["bf16"]["enabled"], effective["precision"], notes) == (
        False,
        False,
        "fp32",
        [],
    )


def test_a_value_the_json_fixes_is_used_when_the_cli_is_silent():
    config = shipped_config()
    config["optimizer"]["params"]["lr"] = 3e-5
    config["train_micro_batch_size_per_gpu"] = 8
    resolved, effective, _ = resolve(config)
    assert resolved["optimizer"]["params"]["lr"] == 3e-5 and effective["lr"] == 3e-5
    assert effective["micro_batch_size"] == 8 and resolved["train_batch_size"] == 8 * 2 * 2


def test_a_value_the_json_fixes_and_the_cli_contradicts_is_an_error_naming_both():
    config = shipped_config()
    config["optimizer"]["params"]["lr"] = 3e-5
    config["gradient_accumulation_steps"] = 4
    with pytest.raises(ConfigError) as error:
        resolve(config, explicit={"lr", "grad_accum_steps"})
    message = str(error.value)
    assert "optimizer.params.lr=3e-05 but --lr 0.0001" in message
    assert "gradient_accumulation_steps=4 but --grad-accum 2" in message  # every problem at once


def test_a_fixed_global_batch_that_does_not_divide_is_an_error():
    config = shipped_config()
    config["train_batch_size"] = 10
    with pytest.raises(
        ConfigError, match=r"train_batch_size=10, which is not --batch-size 4 × --grad-accum 2 × 2 ranks = 16"
    ):
        resolve(config)


def test_precision_fixed_by_the_json_and_contradicted_is_an_error():
    config = shipped_config()
    config["bf16"]["enabled"] = True
    config["fp16"]["enabled"] = False
    with pytest.raises(ConfigError, match="enables bf16 but --precision fp16"):
        resolve(config, explicit={"precision"})
    assert resolve(config)[1]["precision"] == "bf16"


def test_a_fixed_scheduler_type_contradicted_by_lr_schedule_is_an_error():
    config = shipped_config()
    config["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {"warmup_max_lr": "auto", "total_num_steps": "auto", "warmup_num_steps": 5},
    }
    with pytest.raises(ConfigError, match="scheduler.type=WarmupDecayLR but --lr-schedule cosine"):
        resolve(config, lr_schedule="cosine", explicit={"lr_schedule"})
    resolved, _, _ = resolve(config)
    assert resolved["scheduler"]["params"] == {"warmup_max_lr": 1e-4, "total_num_steps": 100, "warmup_num_steps": 5}


def test_non_positive_batch_is_an_error():
    with pytest.raises(ConfigError, match="--batch-size -1: must be a positive whole number"):
        resolve(micro_batch_size=-1)


def test_unreadable_or_malformed_json_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        load_ds_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 4,\n "fp16": {enabled: true}}')
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON: .* at line 2 column"):
        load_ds_config(bad)


def test_latest_checkpoint_follows_deepspeeds_latest_file(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / checkpoint_tag(20)).mkdir()
    (tmp_path / "latest").write_text(checkpoint_tag(20))
    assert latest_checkpoint(tmp_path) == "step-00000020"
    (tmp_path / "latest").write_text(checkpoint_tag(30))  # names a folder that is gone
    assert latest_checkpoint(tmp_path) is None

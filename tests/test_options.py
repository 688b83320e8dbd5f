"""One declaration per option: the click options, --help sections, resume rules, DeepSpeed "auto" fills and
config.json all come from the typed groups of wdsbr.options."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from wdsbr.cli import command
from wdsbr.engine import _FILLED, load_ds_config, resolve_ds_config
from wdsbr.options import (
    DecodingOptions,
    EvaluateOptions,
    ModelOptions,
    OptimOptions,
    RuntimeOptions,
    TrainOptions,
    explicit_options,
)


def _parsed(options: type, args: list[str]) -> tuple[object, set[str]]:
    seen = {}

    @command(options.sections())
    @options.click_options()
    def main(**values):
        seen.update(opts=options.from_flat(values), explicit=explicit_options(click.get_current_context()))

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return seen["opts"], seen["explicit"]


def test_the_command_line_fills_typed_groups_and_says_what_it_gave():
    opts, explicit = _parsed(TrainOptions, ["--lr", "3e-4", "--batch-size", "8", "--pack", "--deepspeed", "x.json"])
    assert isinstance(opts.optim, OptimOptions) and opts.optim.lr == 3e-4 and opts.optim.batch_size == 8
    assert opts.data.pack is True and opts.optim.ds_config_path == "x.json" and opts.optim.grad_accum == 1
    assert explicit == {"lr", "batch_size", "pack", "ds_config_path"}
    assert opts == TrainOptions.from_flat(opts.as_dict())  # config.json's flat options rebuild the same object


def test_every_option_is_declared_once_and_listed_in_one_section():
    for options in (TrainOptions, EvaluateOptions):
        names = [item.name for _, _, item in options.fields()]
        sections = [name for names in options.sections().values() for name in names]
        assert len(names) == len(set(names)) and sorted(sections) == sorted([*names, "help"])


def test_evaluate_shares_the_trainers_model_decoding_and_runtime_groups():
    groups = [{group for _, group in options.groups()} for options in (TrainOptions, EvaluateOptions)]
    assert groups[0] & groups[1] == {ModelOptions, DecodingOptions, RuntimeOptions}


def test_resume_restores_every_saved_option_but_the_jobs_own():
    assert TrainOptions.not_resumed() == {"output_dir", "resume", "stop_after_steps", "debug", "local_rank"}
    saved = TrainOptions().replace({"lr": 1e-3, "output_dir": "runs/a", "no_such_option": 1}).as_dict()
    assert saved["lr"] == 1e-3 and "no_such_option" not in saved and "local_rank" not in saved  # hidden: not saved


def test_the_deepspeed_auto_values_come_from_the_options_that_declare_them():
    assert _FILLED == {
        "train_micro_batch_size_per_gpu": ("micro_batch_size", "--batch-size"),
        "gradient_accumulation_steps": ("grad_accum_steps", "--grad-accum"),
        "optimizer.params.lr": ("lr", "--lr"),
        "optimizer.params.weight_decay": ("weight_decay", "--weight-decay"),
        "gradient_clipping": ("max_grad_norm", "--max-grad-norm"),
    }
    opts, explicit = _parsed(TrainOptions, ["--batch-size", "3", "--grad-accum", "2", "--lr", "5e-5"])
    settings, given = opts.deepspeed_settings(explicit)
    assert given == {"micro_batch_size", "grad_accum_steps", "lr"}
    config, effective, _ = resolve_ds_config(
        load_ds_config("configs/ds_zero2.json"), settings, given, world_size=2, device_type="cpu", native_bf16=True
    )
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (3, 2)
    assert config["train_batch_size"] == 12 and config["optimizer"]["params"]["lr"] == 5e-5
    assert effective["precision"] == "bf16"  # fp16, the default, on a CPU


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr-schedule", "step"], "'step' is not one of"),
        (["--timestamps", "2"], "2.0 is not in the range 0<=x<=1"),
        (["--batch-size", "many"], "'many' is not a valid integer"),
    ],
)
def test_a_bad_value_is_refused_by_its_declared_type(args, message):
    @command(TrainOptions.sections())
    @TrainOptions.click_options()
    def main(**values):
        raise AssertionError("not reached")

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output

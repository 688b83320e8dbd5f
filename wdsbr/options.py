"""The command-line options of `launch/train.py` and `launch/evaluate.py`, declared once each.

Every option is one typed field of a group (a dataclass) with its help text; a command's options are a dataclass
of groups (`TrainOptions`, `EvaluateOptions`). From these declarations come the click options (`click_options`),
the `--help` sections (a group's `SECTION`), the resume rules (`resumed=False`), the DeepSpeed "auto" fills
(`deepspeed=`: the setting, and the JSON path it fills) and `config.json` (`as_dict`). Groups used by both commands
(`ModelOptions`, `DecodingOptions`, `RuntimeOptions`) are declared once. This module imports nothing heavy (no
torch, no deepspeed), so `--help` and a mistyped option answer at once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import click

DEFAULT_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
METRICS = ("wer", "cer", "loss", "long_wer")  # all lower-is-better; long_wer: --val-long-form recordings
PRECISIONS = ("fp16", "bf16", "fp32")
ENGINES = ("transformers", "faster-whisper", "whisper.cpp")
EXPORTS = ("ct2", "ggml")  # train.py --export: the formats, comma-separated


def export_formats(value: str) -> list[str]:
    """train.py --export's formats (`ct2`, `ggml`, `ct2,ggml`), in the order given; one error naming the unknown."""
    formats = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [part for part in formats if part not in EXPORTS]
    if unknown or not formats:
        raise ValueError(f"--export {value}: use {', '.join(EXPORTS)} or both, comma-separated (ct2,ggml)")
    return list(dict.fromkeys(formats))


QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "int16")
COMPUTE_TYPES = ("default", "auto", *QUANTIZATIONS)


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    type: Any = None,
    is_flag: bool = False,
    hidden: bool = False,
    multiple: bool = False,
    names: tuple[str, ...] = (),
    resumed: bool = True,
    deepspeed: tuple[str, str | None] | None = None,
) -> Any:
    """One option: its default and help, and what is derived from it. `flag`: the option's name when it is not
    the field's (`--deepspeed` for `ds_config_path`); `names`: more spellings; `resumed=False`: `--resume` does not
    restore it from the run's config.json; `deepspeed=(setting, JSON path or None)`: it fills DeepSpeed's "auto"
    value at that path (`wdsbr.engine.resolve_ds_config`'s settings). A hidden option is neither shown nor saved;
    a `multiple` one is repeated on the command line and holds a tuple (the default is one)."""
    return field(
        default=default,
        metadata=dict(
            help=help,
            flag=flag,
            type=type,
            is_flag=is_flag,
            hidden=hidden,
            multiple=multiple,
            names=names,
            resumed=resumed and not hidden,
            deepspeed=deepspeed,
        ),
    )


def flag_of(item: dataclasses.Field) -> str:
    return item.metadata["flag"] or "--" + item.name.replace("_", "-")


# ------------------------------------------------------------------------------------------ shared by both commands
@dataclass
class ModelOptions:
    SECTION: ClassVar[str] = "Model"
    model: str = option(
        "openai/whisper-small",
        "Hub id (openai/whisper-small) or local folder of a Whisper checkpoint "
        "(any save_pretrained folder, a run's best/).",
    )
    language: str = option("br", "Language of the transcripts (code or name); ignored by *.en models.")


@dataclass
class DecodingOptions:
    SECTION: ClassVar[str] = "Decoding and scoring"
    text_normalizer: str = option(
        "default",
        "'default' (wdsbr.text.clean_text), 'breton' (anaouder: numbers spelled "
        "out) or module:function; applied to labels, transcripts and references.",
    )
    num_beams: int = option(1, "Beam search width (1: greedy).")
    generation_max_length: int = option(225, "Max new tokens per transcript.")


@dataclass
class RuntimeOptions:
    SECTION: ClassVar[str] = "Runtime"
    precision: str = option(
        "fp16",
        "Compute precision; fp16 becomes bf16 on CPU (fp32 on a CPU without native bf16).",
        type=click.Choice(PRECISIONS),
        deepspeed=("precision", None),
    )
    num_workers: int = option(DEFAULT_WORKERS, "DataLoader workers per rank (default: 4, at most the CPU cores).")
    dist_timeout_minutes: float = option(30.0, "Under a launcher: a dead rank fails the others after this.")
    debug: bool = option(False, "Show tracebacks for configuration errors.", is_flag=True, resumed=False)
    local_rank: int | None = option(
        None, "Passed by the deepspeed launcher.", flag="--local_rank", names=("--local-rank",), type=int, hidden=True
    )


# ---------------------------------------------------------------------------------------------------- training
@dataclass
class DataOptions:
    SECTION: ClassVar[str] = "Data"
    train_shards: tuple[str, ...] = option(
        ("shards/train",),
        "Training shards: folder, brace pattern or URL. Repeat as NAME=SPEC@FACTOR for several sources, each named "
        "and shown FACTOR times an epoch (default 1; 0.5: half of it, a different half each epoch).",
        multiple=True,
    )
    val_shards: tuple[str, ...] = option(
        ("shards/validation",),
        "Validation shards: folder, brace pattern or URL. Repeat as NAME=SPEC for several sets, each scored on its "
        "own (wer/NAME, cer/NAME) and pooled (wer, cer).",
        multiple=True,
    )
    shuffle_buffer: int = option(1000, "Samples in each worker's shuffle buffer.")
    epoch_samples: int | None = option(
        None,
        "Training samples per epoch (else counted: manifest.json, tar headers; needed for pipe: shards).",
        type=int,
    )
    pack: bool = option(
        False, "Pack consecutive utterances into each 30 s window (training only; see docs/data.md).", is_flag=True
    )
    pack_fraction: float = option(1.0, "With --pack: share of windows packed.", type=click.FloatRange(0, 1))
    timestamps: float = option(
        0.0,
        "Share of training windows labelled with Whisper's timestamps (0.2 as distil-whisper; see docs/training.md).",
        type=click.FloatRange(0, 1),
    )
    prev_text: float = option(
        0.0,
        "Share of training windows prompted with the text before them, out of the loss (0.2 as distil-whisper).",
        type=click.FloatRange(0, 1),
    )


@dataclass
class AugmentOptions:
    SECTION: ClassVar[str] = "Augmentation (training only)"
    spec_augment: bool = option(
        False, "Time and frequency masks on the log-mel (wdsbr.augment.SpecAugment's defaults).", is_flag=True
    )
    speed_perturb: str | None = option(
        None, "Speed factors drawn per clip, e.g. 0.9,1.0,1.1 (duration and pitch change together)."
    )


@dataclass
class OptimOptions:
    SECTION: ClassVar[str] = "Optimisation"
    ds_config_path: str = option(
        "configs/ds_zero2.json",
        'DeepSpeed JSON; its "auto" values come from these options. configs/ds_zero2_offload.json keeps the optimizer '
        "states in CPU memory: for a model whose full fine-tuning does not fit the GPU (slower steps).",
        flag="--deepspeed",
    )
    batch_size: int = option(
        16,
        "Micro-batch per rank: clips in each forward/backward of one rank (DeepSpeed's "
        "train_micro_batch_size_per_gpu); the global batch is this × --grad-accum × ranks.",
        deepspeed=("micro_batch_size", "train_micro_batch_size_per_gpu"),
    )
    grad_accum: int = option(
        1,
        "Micro-batches per optimizer step (DeepSpeed's gradient_accumulation_steps).",
        deepspeed=("grad_accum_steps", "gradient_accumulation_steps"),
    )
    lr: float = option(1e-5, "Peak learning rate after warm-up.", deepspeed=("lr", "optimizer.params.lr"))
    warmup_steps: int = option(500, "Linear warm-up, in optimizer steps.", deepspeed=("warmup_steps", None))
    max_steps: int = option(5000, "Optimizer steps of the whole schedule.", deepspeed=("max_steps", None))
    lr_schedule: str = option(
        "linear", "Decay after warm-up.", type=click.Choice(["linear", "cosine"]), deepspeed=("lr_schedule", None)
    )
    weight_decay: float = option(
        0.0, "AdamW weight decay.", deepspeed=("weight_decay", "optimizer.params.weight_decay")
    )
    max_grad_norm: float = option(1.0, "Gradient clipping.", deepspeed=("max_grad_norm", "gradient_clipping"))
    seed: int = option(0, "Seeds the data order and the initialisation.")
    freeze_encoder: bool = option(False, "Train the decoder only.", is_flag=True)
    gradient_checkpointing: bool = option(False, "Trade compute for memory.", is_flag=True)


@dataclass
class LoraOptions:
    SECTION: ClassVar[str] = "LoRA (one small GPU: train adapters, not the model)"
    lora: int = option(
        0,
        "Train LoRA adapters of this rank instead of every weight (0: full fine-tuning); best/ holds the merged "
        "model, best/adapter/ the adapter. Memory: --deepspeed configs/ds_zero2_offload.json keeps the optimizer "
        "states in CPU memory instead.",
    )
    lora_alpha: float = option(64.0, "--lora: the adapters' scale α (their update is multiplied by α / rank).")
    lora_dropout: float = option(0.05, "--lora: dropout on the adapters' input.")
    lora_targets: str = option("q_proj,v_proj", "--lora: the linear layers that get adapters, by name.")


@dataclass
class ValidationOptions:
    SECTION: ClassVar[str] = "Validation and early stopping"
    eval_every: int = option(500, "Evaluate (and checkpoint) every N steps, and at the end.")
    eval_batch_size: int | None = option(None, "Validation micro-batch (default: --batch-size).", type=int)
    val_long_form: str | None = option(
        None, "Also score a folder of long recordings (ID.wav + ID.txt or .ali) whole at each evaluation: long_wer."
    )
    metric: str = option(
        "wer", f"What early stopping and best/ follow: {', '.join(METRICS)}, or wer/NAME or cer/NAME (one set)."
    )
    min_delta: float = option(0.0, "Improvement smaller than this does not count.")
    patience: int = option(3, "Evaluations without improvement before stopping; 0: never.")
    val_lm: str | None = option(
        None, "Decode validation with this n-gram LM fused into the search (tools/build_lm.py); off by default."
    )
    val_lm_alpha: float = option(0.5, "--val-lm: the LM's weight α (tools/tune_lm.py tunes it on a trained model).")
    val_lm_beta: float = option(0.0, "--val-lm: the bonus per word β.")


@dataclass
class CheckpointOptions:
    SECTION: ClassVar[str] = "Checkpoints, resume and export"
    output_dir: str | None = option(
        None, "Run folder (best/, checkpoints/, metrics.jsonl). Default: runs/<timestamp>.", resumed=False
    )
    keep_checkpoints: int = option(2, "DeepSpeed checkpoints kept (the last K).")
    resume: bool = option(
        False,
        "Continue the run in --output-dir from its latest checkpoint, with its saved options.",
        is_flag=True,
        resumed=False,
    )
    stop_after_steps: int | None = option(
        None, "End this job after N steps (checkpointed); --resume continues.", type=int, resumed=False
    )
    export: str | None = option(
        None,
        "At the end, convert best/ and record each export's validation WER: ct2 (best-ct2/, faster-whisper), ggml "
        "(best-ggml.bin, whisper.cpp), or both: ct2,ggml.",
    )


@dataclass
class LoggingOptions:
    SECTION: ClassVar[str] = "Logging"
    log_every: int = option(10, "Log a metrics row every N steps.")


# -------------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalDataOptions:
    SECTION: ClassVar[str] = "Data and output"
    data: str | None = option(None, "Shards (folder of .tar, brace pattern, URL) or a folder of ID.wav + ID.txt pairs.")
    output: str | None = option(
        None, "Write every sample to this TSV (worst first) and a Markdown report beside it (.md)."
    )
    max_samples: int | None = option(None, "Score only the first N samples of the data (a quick look).", type=int)
    batch_size: int = option(16, "Samples per generate() call on each rank.")


@dataclass
class EngineOptions:
    SECTION: ClassVar[str] = "Engine"
    engine: str = option(
        "transformers",
        "transformers (a save_pretrained folder), faster-whisper (a CTranslate2 folder) or whisper.cpp (a ggml "
        "file), the last two from tools/export.py.",
        type=click.Choice(ENGINES),
    )
    compute_type: str = option(
        "default",
        "faster-whisper only: CTranslate2 compute type (default: the export's quantization).",
        type=click.Choice(COMPUTE_TYPES),
    )


@dataclass
class LanguageModelOptions:
    SECTION: ClassVar[str] = "Language model"
    lm: str | None = option(
        None,
        "Fuse this n-gram LM (tools/build_lm.py: ARPA or KenLM binary) into the search: score = acoustic log-prob "
        "+ α·LM log10-prob + β·words. Use --num-beams 5.",
    )
    lm_alpha: float | None = option(
        None, "--lm: the LM's weight α (default: --model's lm.json from tools/tune_lm.py, else 0.5).", type=float
    )
    lm_beta: float | None = option(None, "--lm: the bonus per word β (default: --model's lm.json, else 0).", type=float)


@dataclass
class LongFormOptions:
    SECTION: ClassVar[str] = "Long recordings"
    long_form: bool = option(
        False,
        "--data is a folder of long recordings (ID.wav + ID.txt, or .ali): each transcribed whole, with timestamps.",
        is_flag=True,
    )
    condition_on_previous: bool = option(
        False,
        "--long-form: prompt each 30 s window with the text decoded before "
        "it (as faster-whisper's default; train.py --prev-text).",
        is_flag=True,
    )
    temperature_fallback: bool = option(
        False,
        "--long-form: decode a window again, sampled at 0.2 … 1.0, when its "
        "tokens loop (compression ratio > 1.35) or its mean log-probability < -1 "
        "(Whisper's long-form fallback).",
        is_flag=True,
    )
    subtitles: str = option(
        "srt",
        "--long-form with --output: the subtitle format written per recording.",
        type=click.Choice(["srt", "vtt"]),
    )


# ---------------------------------------------------------------------------------------------------- commands
class Options:
    """A command's options: a dataclass whose fields are groups. Option names are unique across its groups."""

    @classmethod
    def groups(cls) -> list[tuple[str, type]]:
        return [(item.name, item.default_factory) for item in dataclasses.fields(cls)]

    @classmethod
    def fields(cls) -> list[tuple[str, type, dataclasses.Field]]:
        """(group name, group class, field) for every option, in `--help` order."""
        return [(name, group, item) for name, group in cls.groups() for item in dataclasses.fields(group)]

    @classmethod
    def sections(cls) -> dict[str, list[str]]:
        """{--help heading: [option names]}, for `wdsbr.cli.command`; --help itself last."""
        sections = {group.SECTION: [item.name for item in dataclasses.fields(group)] for _, group in cls.groups()}
        sections[list(sections)[-1]].append("help")
        return sections

    @classmethod
    def click_options(cls, overrides: dict[str, dict] | None = None) -> Callable:
        """A decorator adding every option to a click command; `overrides` changes click settings of some
        ({"model": {"required": True}})."""

        def decorate(command: Callable) -> Callable:
            for _, _, item in reversed(cls.fields()):
                meta = item.metadata
                settings = dict(
                    default=item.default,
                    help=meta["help"],
                    hidden=meta["hidden"],
                    multiple=meta["multiple"],
                    show_default=item.default is not None and not meta["is_flag"],
                )
                settings.update(
                    {"is_flag": True} if meta["is_flag"] else {"type": meta["type"]} if meta["type"] else {}
                )
                settings.update((overrides or {}).get(item.name, {}))
                command = click.option(flag_of(item), *meta["names"], item.name, **settings)(command)
            return command

        return decorate

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Options:
        """The options from {option name: value} (click's keyword arguments, or a config.json's); missing names take
        their default; a repeated option's value is a tuple (a single string, as older runs saved it, becomes one)."""

        def value(item: dataclasses.Field) -> Any:
            given = values[item.name]
            if item.metadata["multiple"] and not isinstance(given, (list, tuple)):
                return (given,)
            return tuple(given) if item.metadata["multiple"] else given

        return cls(
            **{
                name: group(**{item.name: value(item) for item in dataclasses.fields(group) if item.name in values})
                for name, group in cls.groups()
            }
        )

    def as_dict(self) -> dict[str, Any]:
        """{option name: value} of every option shown in --help: what config.json saves."""
        return {
            item.name: getattr(getattr(self, name), item.name)
            for name, _, item in self.fields()
            if not item.metadata["hidden"]
        }

    def replace(self, values: dict[str, Any]) -> Options:
        """A copy with these {option name: value} changed; names of no option are ignored."""
        return self.from_flat({**self.as_dict(), **values})

    @classmethod
    def not_resumed(cls) -> set[str]:
        return {item.name for _, _, item in cls.fields() if not item.metadata["resumed"]}

    @classmethod
    def deepspeed_fills(cls) -> dict[str, tuple[str, str]]:
        """{DeepSpeed JSON path: (setting, --option)} of the values an "auto" in the JSON takes from the options."""
        return {
            meta["deepspeed"][1]: (meta["deepspeed"][0], flag_of(item))
            for _, _, item in cls.fields()
            if (meta := item.metadata)["deepspeed"] and meta["deepspeed"][1]
        }

    @classmethod
    def deepspeed_flags(cls) -> dict[str, str]:
        """{setting: --option} of every option that fills a DeepSpeed setting, for the messages that name them."""
        return {
            item.metadata["deepspeed"][0]: flag_of(item) for _, _, item in cls.fields() if item.metadata["deepspeed"]
        }

    def deepspeed_settings(self, explicit: set[str]) -> tuple[dict[str, Any], set[str]]:
        """`resolve_ds_config`'s settings {setting: value}, and those of them the command line gave (`explicit`:
        option names)."""
        chosen = [
            (item.metadata["deepspeed"][0], item.name, getattr(getattr(self, name), item.name))
            for name, _, item in self.fields()
            if item.metadata["deepspeed"]
        ]
        return {setting: value for setting, _, value in chosen}, {
            setting for setting, name, _ in chosen if name in explicit
        }


@dataclass
class TrainOptions(Options):
    """launch/train.py's options."""

    data: DataOptions = field(default_factory=DataOptions)
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    whisper: ModelOptions = field(default_factory=ModelOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)
    validation: ValidationOptions = field(default_factory=ValidationOptions)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    checkpoints: CheckpointOptions = field(default_factory=CheckpointOptions)
    logging: LoggingOptions = field(default_factory=LoggingOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)


@dataclass
class EvaluateOptions(Options):
    """launch/evaluate.py's options."""

    whisper: ModelOptions = field(default_factory=ModelOptions)
    inputs: EvalDataOptions = field(default_factory=EvalDataOptions)
    backend: EngineOptions = field(default_factory=EngineOptions)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    lm: LanguageModelOptions = field(default_factory=LanguageModelOptions)
    longform: LongFormOptions = field(default_factory=LongFormOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)


def explicit_options(ctx: click.Context) -> set[str]:
    """The option names the command line gave (not defaults): they win over a resumed run's saved values."""
    return {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


for _command in (TrainOptions, EvaluateOptions):  # one declaration per name: a clash is a bug, found at import
    _names = [item.name for _, _, item in _command.fields()]
    assert len(_names) == len(set(_names)), f"{_command.__name__}: an option name is declared twice"

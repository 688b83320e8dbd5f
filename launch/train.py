"""Fine-tune Whisper with DeepSpeed ZeRO-2 on WebDataset shards; rank 0 evaluates WER, stops early, saves best/.

    deepspeed launch/train.py --deepspeed configs/ds_zero2.json
    deepspeed --num_gpus 8 launch/train.py --deepspeed configs/ds_zero2.json --model openai/whisper-small \
        --train-shards shards/train --val-shards shards/validation --output-dir runs/br-small --max-steps 5000
    deepspeed launch/train.py --deepspeed configs/ds_zero2.json --output-dir runs/br-small --resume

Sections, in order: config → distributed → model → data → engine → resume → loop → final export.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies("deepspeed")  # a plain `python` without the set-up: one line naming the fix, no traceback

import json
import signal
import time

import click
import torch

from wdsbr import dist
from wdsbr.cli import grouped_command, run
from wdsbr.data import DEFAULT_WORKERS, SkipCounter, make_eval_loader, make_train_loader, parse_speeds
from wdsbr.engine import (ConfigError, build_engine, compute_dtype, device_type, init_distributed, latest_checkpoint,
                          load_checkpoint, load_ds_config, resolve_ds_config, settings_from_options, training_step)
from wdsbr.evaluation import METRICS, EarlyStopping, generate_kwargs
from wdsbr.export import require_export_extra
from wdsbr.longform import list_recordings, my_share
from wdsbr.dist import say
from wdsbr.metrics import MetricsLog, progress_bar
from wdsbr.model import check_model, is_multilingual, language_code, load_model, load_processor, quiet_libraries
from wdsbr.scoring import load_normalizer
from wdsbr.streams import count_samples, list_shards
from wdsbr.training import (RunState, StepMeter, any_rank_signalled, evaluate, finish, make_run_folder,
                            save_run_checkpoint, say_left_out)

caught: list[str] = []  # SIGTERM (scancel, a launcher stopping) or SIGUSR1 (Slurm's warning before the time limit)
# --resume restores every option of the run except these (and those given again on the command line).
NOT_RESUMED = ("resume", "output_dir", "stop_after_steps", "debug", "local_rank")

# ------------------------------------------------------------------------------------------------------ config
O = click.option
SECTIONS = {  # --help lists the options under these headings
    "Data": ["train_shards", "val_shards", "num_workers", "shuffle_buffer", "epoch_samples", "pack", "pack_fraction", "timestamps", "prev_text", "text_normalizer"],
    "Augmentation (training only)": ["spec_augment", "speed_perturb"],
    "Model": ["model", "language", "freeze_encoder", "gradient_checkpointing"],
    "Optimisation": ["ds_config_path", "batch_size", "grad_accum", "lr", "warmup_steps", "max_steps", "lr_schedule",
                     "weight_decay", "max_grad_norm", "precision", "seed"],
    "Evaluation and early stopping": ["eval_every", "eval_batch_size", "generation_max_length", "num_beams", "val_long_form",
                                      "metric", "min_delta", "patience"],
    "Checkpoints, resume and export": ["output_dir", "keep_checkpoints", "resume", "stop_after_steps", "export"],
    "Logging": ["log_every", "debug", "help"], "Distributed": ["dist_timeout_minutes"],
}


@click.command(cls=grouped_command(SECTIONS), context_settings={"max_content_width": 110})
@O("--deepspeed", "ds_config_path", default="configs/ds_zero2.json", show_default=True, help="DeepSpeed JSON; its \"auto\" values come from these options.")
@O("--model", default="openai/whisper-small", show_default=True, help="Hub id or local folder of a Whisper checkpoint.")
@O("--language", default="br", show_default=True, help="Language of the transcripts (code or name); ignored by *.en models.")
@O("--train-shards", default="shards/train", show_default=True, help="Training shards: folder, brace pattern or URL.")
@O("--val-shards", default="shards/validation", show_default=True, help="Validation shards: folder, brace pattern or URL.")
@O("--output-dir", default=None, help="Run folder (best/, checkpoints/, metrics.jsonl). Default: runs/<timestamp>.")
@O("--batch-size", type=int, default=16, show_default=True, help="Micro-batch per rank (DeepSpeed train_micro_batch_size_per_gpu).")
@O("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches per optimizer step.")
@O("--lr", type=float, default=1e-5, show_default=True, help="Peak learning rate after warm-up.")
@O("--warmup-steps", type=int, default=500, show_default=True, help="Linear warm-up, in optimizer steps.")
@O("--max-steps", type=int, default=5000, show_default=True, help="Optimizer steps of the whole schedule.")
@O("--lr-schedule", type=click.Choice(["linear", "cosine"]), default="linear", show_default=True, help="Decay after warm-up.")
@O("--weight-decay", type=float, default=0.0, show_default=True, help="AdamW weight decay.")
@O("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping.")
@O("--precision", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True, help="fp16 falls back to bf16 on CPU.")
@O("--seed", type=int, default=0, show_default=True, help="Seeds the data order and the initialisation.")
@O("--eval-every", type=int, default=500, show_default=True, help="Evaluate (and checkpoint) every N steps, and at the end.")
@O("--val-long-form", default=None, help="Also score a folder of long recordings (ID.wav + ID.txt or .ali) whole at each evaluation: long_wer.")
@O("--metric", type=click.Choice(METRICS), default="wer", show_default=True, help="What early stopping and best/ follow.")
@O("--min-delta", type=float, default=0.0, show_default=True, help="Improvement smaller than this does not count.")
@O("--patience", type=int, default=3, show_default=True, help="Evaluations without improvement before stopping; 0: never.")
@O("--num-workers", type=int, default=DEFAULT_WORKERS, show_default=True, help="DataLoader workers per rank (default: 4, at most the CPU cores).")
@O("--shuffle-buffer", type=int, default=1000, show_default=True, help="Samples in each worker's shuffle buffer.")
@O("--epoch-samples", type=int, default=None, help="Training samples per epoch (else counted: manifest.json, tar headers; needed for pipe: shards).")
@O("--pack", is_flag=True, help="Pack consecutive utterances into each 30 s window (training only; see docs/data.md).")
@O("--pack-fraction", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="With --pack: share of windows packed.")
@O("--timestamps", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of training windows labelled with Whisper's timestamps (0.2 as distil-whisper; see docs/training.md).")
@O("--prev-text", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of training windows prompted with the text before them, out of the loss (0.2 as distil-whisper).")
@O("--spec-augment", is_flag=True, help="Time and frequency masks on the log-mel (wdsbr.augment.SpecAugment's defaults).")
@O("--speed-perturb", default=None, help="Speed factors drawn per clip, e.g. 0.9,1.0,1.1 (duration and pitch change together).")
@O("--text-normalizer", default="default", show_default=True, help="'default' (wdsbr.text.clean_text), 'breton' (anaouder: numbers spelled out) or module:function.")
@O("--eval-batch-size", type=int, default=None, help="Validation micro-batch (default: --batch-size).")
@O("--generation-max-length", type=int, default=225, show_default=True, help="Max new tokens when decoding.")
@O("--num-beams", type=int, default=1, show_default=True, help="Beam search width for validation.")
@O("--freeze-encoder", is_flag=True, help="Train the decoder only.")
@O("--gradient-checkpointing", is_flag=True, help="Trade compute for memory.")
@O("--keep-checkpoints", type=int, default=2, show_default=True, help="DeepSpeed checkpoints kept (the last K).")
@O("--log-every", type=int, default=10, show_default=True, help="Log a metrics row every N steps.")
@O("--stop-after-steps", type=int, default=None, help="End this job after N steps (checkpointed); --resume continues.")
@O("--resume", is_flag=True, help="Continue the run in --output-dir from its latest checkpoint, with its saved options.")
@O("--export", type=click.Choice(["ct2"]), default=None, help="At the end, convert best/ to CTranslate2 (best-ct2/, faster-whisper) and record its validation WER.")
@O("--dist-timeout-minutes", type=float, default=30.0, show_default=True, help="A dead rank fails the others after this.")
@O("--debug", is_flag=True, help="Show tracebacks for configuration errors.")
@O("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)  # passed by the deepspeed launcher
def main(**opts):
    """Fine-tune Whisper on Breton (or any language) from WebDataset shards with DeepSpeed ZeRO-2."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):  # from the first moment: a signal during start-up is kept too
        signal.signal(signum, lambda number, _frame: caught.append(signal.Signals(number).name))
    ctx = click.get_current_context()
    explicit = {name for name in opts if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    try:
        cfg, ds_config, notes = configure(opts, explicit)
        if not ds_config:  # a finished run: say so and leave
            if dist.is_main():
                click.echo(notes[0])
            return
        train(cfg, ds_config, notes)
    except (ConfigError, FileNotFoundError) as error:  # the user's to fix: one line, exit 2
        if opts["debug"]:
            raise
        if dist.is_main():
            click.echo(f"error: {error}", err=True)
        sys.exit(2)


def configure(opts: dict, explicit: set[str]) -> tuple[dict, dict, list[str]]:
    """Check everything before any heavy work; raise one ConfigError that lists every problem."""
    cfg, problems = dict(opts), []
    out = Path(cfg["output_dir"]) if cfg["output_dir"] else None
    if cfg["resume"] and out and (out / "summary.json").is_file() and json.loads((out / "summary.json").read_text())["finished"]:
        return cfg, {}, [f"{out} finished already (see {out / 'summary.json'}): nothing to resume"]
    if cfg["resume"]:
        saved = out / "config.json" if out else None
        if saved is None or not saved.is_file() or latest_checkpoint(out / "checkpoints") is None:
            raise ConfigError(f"--resume: no checkpoint to resume in {out or '(give --output-dir)'}")
        previous = json.loads(saved.read_text())["options"]
        cfg.update({k: v for k, v in previous.items() if k in cfg and k not in NOT_RESUMED and k not in explicit})
    elif out and latest_checkpoint(out / "checkpoints") is not None:
        problems.append(f"{out} already holds a run: pass --resume to continue it or choose another --output-dir")
    if cfg["metric"] == "long_wer" and not cfg["val_long_form"]:
        problems.append("--metric long_wer: needs --val-long-form DATA, the long recordings to score")
    for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "log_every", "keep_checkpoints"):
        if cfg[name] < 1:
            problems.append(f"--{name.replace('_', '-')} {cfg[name]}: must be at least 1")
    for name, check in (("language", lambda: language_code(cfg["language"])), ("text_normalizer", lambda: load_normalizer(cfg["text_normalizer"])),
                        ("train_shards", lambda: cfg["epoch_samples"] or count_samples(list_shards(cfg["train_shards"]))),  # or says how
                        ("val_shards", lambda: list_shards(cfg["val_shards"])), ("speed_perturb", lambda: parse_speeds(cfg["speed_perturb"] or "1")),
                        ("export", lambda: cfg["export"] and require_export_extra()),
                        ("val_long_form", lambda: cfg["val_long_form"] and list_recordings(cfg["val_long_form"]))):
        try:
            check()
        except (OSError, ValueError) as error:
            problems.append(f"--{name.replace('_', '-')}: {error}".replace(f"--{name.replace('_', '-')}: --", "--"))
    settings, explicit_settings = settings_from_options(cfg, explicit)
    try:
        ds_config, effective, notes = resolve_ds_config(load_ds_config(cfg["ds_config_path"]), settings, explicit_settings,
                                                        world_size=dist.world_size(), device_type=device_type())
    except ConfigError as error:  # its problems, less the options reported above already
        reported = {problem.split(" ")[0] for problem in problems}
        problems += [problem for problem in str(error).split("; ") if problem.split(" ")[0] not in reported]
        ds_config, effective, notes = {}, settings, []
    try:  # last, and without the network when anything else is wrong: a typo is reported at once
        check_model(cfg["model"], cfg["language"] if not any(p.startswith("--language") for p in problems) else None,
                    load=not problems)
    except (OSError, ValueError) as error:
        problems.append(f"--model: {error}")
    if problems:
        raise ConfigError("; ".join(problems))
    cfg.update(batch_size=effective["micro_batch_size"], grad_accum=effective["grad_accum_steps"], lr=effective["lr"],
               precision=effective["precision"])
    return cfg, ds_config, notes


def train(cfg: dict, ds_config: dict, notes: list[str]) -> None:
    t_start = time.perf_counter()
    quiet_libraries()
    # ------------------------------------------------------------------------------------------ distributed
    init_distributed(cfg["dist_timeout_minutes"])
    out = make_run_folder(cfg["output_dir"], cfg, ds_config, notes)  # collective: all ranks
    torch.manual_seed(cfg["seed"])

    # ------------------------------------------------------------------------------------------------ model
    processor = load_processor(cfg["model"], cfg["language"])
    model = load_model(cfg["model"])
    language = language_code(cfg["language"]) if is_multilingual(cfg["model"], model.generation_config) else None
    model.config.use_cache = not cfg["gradient_checkpointing"]
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    model.model.encoder.requires_grad_(not cfg["freeze_encoder"])  # --freeze-encoder: train the decoder only

    # ------------------------------------------------------------------------------------------------- data
    stream = dict(tokenizer=processor.tokenizer, prompt_ids=list(processor.tokenizer.prefix_tokens),
                  n_mels=model.config.num_mel_bins, rank=dist.rank(), world_size=dist.world_size(),
                  normalize=load_normalizer(cfg["text_normalizer"]), max_label_tokens=model.config.max_target_positions,
                  decoder_start_token_id=model.config.decoder_start_token_id, num_workers=cfg["num_workers"])
    skipped = SkipCounter()
    val_loader = make_eval_loader(cfg["val_shards"], micro_batch_size=cfg["eval_batch_size"] or cfg["batch_size"], skip_counter=skipped, **stream)
    long_form = None  # --val-long-form: this rank's share of the long recordings, each scored whole
    if cfg["val_long_form"]:
        recordings, rejected = list_recordings(cfg["val_long_form"])
        long_form = my_share(recordings, dist.rank(), dist.world_size())
        say_left_out(rejected)

    # ----------------------------------------------------------------------------------------------- engine
    engine = build_engine(model, ds_config)
    dtype, gen_kwargs = compute_dtype(engine), generate_kwargs(language, cfg["num_beams"], cfg["generation_max_length"])

    # ----------------------------------------------------------------------------------------------- resume
    state = RunState(EarlyStopping(cfg["metric"], cfg["min_delta"], cfg["patience"]), seed=cfg["seed"])
    if cfg["resume"]:
        state = RunState.resumed(load_checkpoint(engine, out / "checkpoints"), cfg["seed"])  # collective: all ranks
        say(f"resumed from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch}), best {state.stopper.metric} {state.stopper.best}")

    # ------------------------------------------------------------------------------------------------- loop
    metrics, meter, bar = MetricsLog(out), StepMeter(engine.device), progress_bar(cfg["max_steps"], state.step)
    while not state.done:
        loader = make_train_loader(cfg["train_shards"], micro_batch_size=cfg["batch_size"], seed=cfg["seed"], epoch=state.epoch,
                                   start_batch=state.batch_in_epoch, shuffle_buffer=cfg["shuffle_buffer"],
                                   epoch_samples=cfg["epoch_samples"], skip_counter=skipped, pack=cfg["pack_fraction"] if cfg["pack"] else 0.0,
                                   spec_augment=cfg["spec_augment"], speed_perturb=cfg["speed_perturb"],
                                   timestamps=cfg["timestamps"], prev_text=cfg["prev_text"], **stream)
        for batch in meter.timed(loader):
            loss = training_step(engine, batch)
            state.batch_in_epoch += 1
            if loss is None:  # NaN/inf on some rank: skipped everywhere before touching the weights
                state.nonfinite_batches += 1
                say(f"step {state.step}: non-finite loss, micro-batch skipped ({state.nonfinite_batches} so far): {', '.join(batch['keys'][:4])}")
                continue
            meter.add(loss, batch)
            if engine.global_steps == state.step:
                continue  # mid-accumulation: DeepSpeed steps the optimizer every --grad-accum micro-batches
            state.step = engine.global_steps
            bar.update(1)
            if state.step % cfg["log_every"] == 0 or state.step == cfg["max_steps"]:
                row = meter.row(engine, state, skipped, cfg["log_every"])  # collective: all ranks
                metrics.log("train", **row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_per_s']:.1f}")
            signalled = any_rank_signalled(caught, engine.device)  # collective: all ranks
            if signalled:
                say(f"step {state.step}: {caught[0] if caught else 'another rank was signalled'}: checkpointing and stopping")
            stop_job = signalled or (cfg["stop_after_steps"] is not None and state.step - state.start_step >= cfg["stop_after_steps"])
            state.done = state.step >= cfg["max_steps"] or stop_job
            if state.step % cfg["eval_every"] == 0 or state.step == cfg["max_steps"]:
                state.stopped_early = evaluate(engine, val_loader, processor, gen_kwargs, dtype, state, normalizer=cfg["text_normalizer"],
                                             out=out, language=language, metrics=metrics, long_form=long_form)  # collective
                state.done = state.done or state.stopped_early
            if state.done or state.step % cfg["eval_every"] == 0:
                save_run_checkpoint(engine, out, state, skipped, loader.batches_per_rank, cfg["keep_checkpoints"])  # collective
                meter.restart()
            if state.done:
                break
        else:  # the epoch's batches are used up: the next epoch reads the shards in a new order
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    bar.total = state.step if state.stopped_early else bar.total  # an early stop closes the bar where it stopped
    bar.close()

    # ----------------------------------------------------------------------------------------- final export
    finish(state, cfg, out, language, metrics, time.perf_counter() - t_start, caught[0] if caught else None)
    torch.distributed.barrier()  # nobody leaves while rank 0 still writes


if __name__ == "__main__":
    run(main)

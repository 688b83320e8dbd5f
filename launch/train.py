"""Fine-tune Whisper with DeepSpeed ZeRO-2 on WebDataset shards; rank 0 evaluates WER, stops early, saves best/.

    deepspeed launch/train.py --deepspeed configs/ds_zero2.json
    deepspeed --num_gpus 8 launch/train.py --deepspeed configs/ds_zero2.json --model openai/whisper-small \
        --train-shards shards/train --val-shards shards/validation --output-dir runs/br-small --max-steps 5000
    deepspeed launch/train.py --deepspeed configs/ds_zero2.json --output-dir runs/br-small --resume

Sections, in order: config → distributed → model → data → engine → resume → loop → final export.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import click
import torch
import transformers
from click.core import ParameterSource

from wdsbr import dist
from wdsbr.breton import SCORE_KEYS, breton_scores
from wdsbr.cli import run
from wdsbr.data import SkipCounter, list_shards, make_eval_loader, make_train_loader
from wdsbr.engine import (ConfigError, build_engine, compute_dtype, device_type, environment_summary, init_distributed,
                          latest_checkpoint, load_checkpoint, load_ds_config, loss_scale, resolve_ds_config,
                          save_checkpoint, training_step)
from wdsbr.evaluation import METRICS, EarlyStopping, gather, generate_kwargs, run_validation, score
from wdsbr.metrics import MetricsLog, progress_bar, say
from wdsbr.modelcard import describe_shards, training_command, write_model_card
from wdsbr.model import is_multilingual, language_code, load_model, load_processor, save_model_atomic
from wdsbr.text import load_normalizer

caught: list[str] = []  # SIGTERM (scancel, a launcher stopping) or SIGUSR1 (Slurm's warning before the time limit)
# --resume restores every option of the run except these (and those given again on the command line).
NOT_RESUMED = ("resume", "output_dir", "stop_after_steps", "debug", "local_rank")

# ------------------------------------------------------------------------------------------------------ config
O = click.option


@click.command(context_settings={"max_content_width": 110})
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
@O("--metric", type=click.Choice(METRICS), default="wer", show_default=True, help="What early stopping and best/ follow.")
@O("--min-delta", type=float, default=0.0, show_default=True, help="Improvement smaller than this does not count.")
@O("--patience", type=int, default=3, show_default=True, help="Evaluations without improvement before stopping; 0: never.")
@O("--num-workers", type=int, default=4, show_default=True, help="DataLoader workers per rank.")
@O("--shuffle-buffer", type=int, default=1000, show_default=True, help="Samples in each worker's shuffle buffer.")
@O("--epoch-samples", type=int, default=None, help="Training samples per epoch (needed for URL shards; else counted).")
@O("--pack", is_flag=True, help="Pack consecutive utterances into each 30 s window (training only; see README).")
@O("--pack-fraction", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="With --pack: share of windows packed.")
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
@O("--dist-timeout-minutes", type=float, default=30.0, show_default=True, help="A dead rank fails the others after this.")
@O("--debug", is_flag=True, help="Show tracebacks for configuration errors.")
@O("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)  # passed by the deepspeed launcher
def main(**opts):
    """Fine-tune Whisper on Breton (or any language) from WebDataset shards with DeepSpeed ZeRO-2."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):  # from the first moment: a signal during start-up is kept too
        signal.signal(signum, lambda number, _frame: caught.append(signal.Signals(number).name))
    ctx = click.get_current_context()
    explicit = {name for name in opts if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
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
    for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "log_every", "keep_checkpoints"):
        if cfg[name] < 1:
            problems.append(f"--{name.replace('_', '-')} {cfg[name]}: must be at least 1")
    for name, check in (("language", lambda: language_code(cfg["language"])), ("text_normalizer", lambda: load_normalizer(cfg["text_normalizer"])),
                        ("train_shards", lambda: list_shards(cfg["train_shards"])), ("val_shards", lambda: list_shards(cfg["val_shards"])),
                        ("model", lambda: load_processor(cfg["model"], cfg["language"]))):
        try:
            check()
        except (OSError, ValueError) as error:
            problems.append(f"--{name.replace('_', '-')}: {error}".replace(f"--{name.replace('_', '-')}: --", "--"))
    settings = {"micro_batch_size": cfg["batch_size"], "grad_accum_steps": cfg["grad_accum"], "lr": cfg["lr"],
                "weight_decay": cfg["weight_decay"], "max_grad_norm": cfg["max_grad_norm"], "warmup_steps": cfg["warmup_steps"],
                "max_steps": cfg["max_steps"], "lr_schedule": cfg["lr_schedule"], "precision": cfg["precision"]}
    cli_names = {"batch_size": "micro_batch_size", "grad_accum": "grad_accum_steps"}
    try:
        ds_config, effective, notes = resolve_ds_config(
            load_ds_config(cfg["ds_config_path"]), settings, {cli_names.get(n, n) for n in explicit},
            world_size=dist.world_size(), device_type=device_type())
    except ConfigError as error:
        problems.append(str(error))
        ds_config, effective, notes = {}, settings, []
    if problems:
        raise ConfigError("; ".join(problems))
    cfg.update(batch_size=effective["micro_batch_size"], grad_accum=effective["grad_accum_steps"], lr=effective["lr"],
               precision=effective["precision"])
    return cfg, ds_config, notes


def train(cfg: dict, ds_config: dict, notes: list[str]) -> None:
    t_start = time.perf_counter()
    transformers.logging.set_verbosity_error()  # generate()'s per-call advice, weight-loading bars
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")  # DeepSpeed's, not ours
    # ------------------------------------------------------------------------------------------ distributed
    init_distributed(cfg["dist_timeout_minutes"])
    rank, world_size = dist.rank(), dist.world_size()
    stamp = [cfg["output_dir"] or f"runs/{datetime.now():%Y%m%d-%H%M%S}"]
    torch.distributed.broadcast_object_list(stamp, src=0)  # collective: all ranks agree on the run folder
    out = Path(stamp[0])
    if dist.is_main():
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        for note in notes:
            say(note)
        (out / "config.json").write_text(json.dumps({"options": {k: v for k, v in cfg.items() if k != "local_rank"},
                                                     "deepspeed": ds_config, "environment": environment_summary()}, indent=2))
    torch.manual_seed(cfg["seed"])

    # ------------------------------------------------------------------------------------------------ model
    processor = load_processor(cfg["model"], cfg["language"])
    tokenizer, prompt_ids = processor.tokenizer, list(processor.tokenizer.prefix_tokens)
    model = load_model(cfg["model"])
    language = language_code(cfg["language"]) if is_multilingual(cfg["model"], model.generation_config) else None
    model.config.use_cache = not cfg["gradient_checkpointing"]
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    if cfg["freeze_encoder"]:
        model.model.encoder.requires_grad_(False)
    normalize = load_normalizer(cfg["text_normalizer"])

    # ------------------------------------------------------------------------------------------------- data
    stream = dict(tokenizer=tokenizer, prompt_ids=prompt_ids, n_mels=model.config.num_mel_bins, rank=rank,
                  world_size=world_size, normalize=normalize, max_label_tokens=model.config.max_target_positions,
                  decoder_start_token_id=model.config.decoder_start_token_id, num_workers=cfg["num_workers"])
    skipped = SkipCounter()
    val_loader = make_eval_loader(cfg["val_shards"], micro_batch_size=cfg["eval_batch_size"] or cfg["batch_size"],
                                  skip_counter=skipped, **stream)

    # ----------------------------------------------------------------------------------------------- engine
    engine = build_engine(model, ds_config)
    dtype, gen_kwargs = compute_dtype(engine), generate_kwargs(language, cfg["num_beams"], cfg["generation_max_length"])

    # ----------------------------------------------------------------------------------------------- resume
    stopper = EarlyStopping(cfg["metric"], cfg["min_delta"], cfg["patience"])
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "skipped_samples": 0, "train_seconds": 0.0}
    if cfg["resume"]:
        state = load_checkpoint(engine, out / "checkpoints")  # collective: all ranks
        stopper = EarlyStopping.from_state_dict(state["early_stopping"])
        say(f"resumed from step {state['step']} (epoch {state['epoch']}, batch {state['batch_in_epoch']}), best {stopper.metric} {stopper.best}")
    step, epoch, batch_in_epoch, start_step = state["step"], state["epoch"], state["batch_in_epoch"], state["step"]

    skipped_before = state["skipped_samples"]  # skipped by the jobs this run resumes

    def skipped_total() -> int:
        """Collective: all ranks. Samples skipped by every rank's loader, over the whole run."""
        count = torch.tensor([skipped.total()], dtype=torch.float64, device=engine.device)
        torch.distributed.all_reduce(count)
        return skipped_before + int(count.item())

    def checkpoint() -> None:
        """Collective: all ranks. DeepSpeed state + where the data stream and early stopping stand."""
        at_end = batch_in_epoch == loader.batches_per_rank  # then resume at the start of the next epoch
        trainer_state = {"step": step, "epoch": epoch + at_end, "batch_in_epoch": 0 if at_end else batch_in_epoch,
                         "seed": cfg["seed"], "early_stopping": stopper.state_dict(), "skipped_samples": skipped_total(),
                         "train_seconds": train_seconds, "nonfinite_batches": nonfinite}
        save_checkpoint(engine, out / "checkpoints", step, trainer_state, cfg["keep_checkpoints"])

    def evaluate() -> bool:
        """Collective: all ranks. Score the whole validation set; rank 0 decides best/stop and broadcasts it."""
        results, loss_sum, tokens, seconds = run_validation(engine.module, val_loader, tokenizer, gen_kwargs, dtype, engine.device)
        results, loss_sum, tokens = gather(results, loss_sum, tokens)
        decision = [None]
        if dist.is_main():
            scores = score(results, normalize)
            scores.update(breton_scores(results, cfg["text_normalizer"]))  # raw, normalised, Whisper-basic WER, labelled
            scores["loss"] = loss_sum / max(1, tokens)
            is_best, save_error = stopper.update(scores, step), None
            if is_best:
                try:
                    save_model_atomic(engine.module, processor, out / "best", language)
                except OSError as error:  # full disk, read-only folder: the previous best/ is intact; say so, go on
                    save_error = f"{out / 'best'}: not updated ({error}); the previous best/ is kept"
                    say(f"error: step {step}: {save_error}")
            metrics.log("eval", step=step, val_loss=scores["loss"], wer=scores["wer"], cer=scores["cer"], samples=scores["samples"],
                        eval_seconds=round(seconds, 3), is_best=is_best, bad_evaluations=stopper.bad_evaluations,
                        best_save_error=save_error, **{name: scores[name] for name in SCORE_KEYS})
            say(f"step {step}: val_loss {scores['loss']:.4f} wer {scores['wer']:.4f} cer {scores['cer']:.4f}"
                f" ({scores['samples']} samples, {seconds:.1f} s){' new best' if is_best else ''}")
            decision = [stopper.should_stop]
        torch.distributed.broadcast_object_list(decision, src=0)  # collective: rank 0's decision for all
        return decision[0]

    # ------------------------------------------------------------------------------------------------- loop
    metrics = MetricsLog(out)
    bar = progress_bar(cfg["max_steps"], step)
    train_seconds, stopped_early, done, nonfinite = state["train_seconds"], False, False, state.get("nonfinite_batches", 0)
    loss_sum, window = torch.zeros((), device=engine.device), torch.zeros(5, dtype=torch.float64)  # since the last row
    t_window = time.perf_counter()
    while not done:
        loader = make_train_loader(cfg["train_shards"], micro_batch_size=cfg["batch_size"], seed=cfg["seed"], epoch=epoch,
                                   start_batch=batch_in_epoch, shuffle_buffer=cfg["shuffle_buffer"],
                                   epoch_samples=cfg["epoch_samples"], skip_counter=skipped, pack=cfg["pack_fraction"] if cfg["pack"] else 0.0, **stream)
        for batch in loader:
            loss = training_step(engine, batch)
            batch_in_epoch += 1
            if loss is None:  # NaN/inf on some rank: skipped everywhere before touching the weights
                nonfinite += 1
                say(f"step {step}: non-finite loss, micro-batch skipped ({nonfinite} so far): {', '.join(batch['keys'][:4])}")
                continue
            loss_sum += loss.float()  # no .item(): it would sync the GPU every micro-batch
            window += torch.tensor([1, len(batch["keys"]), batch["utterances"], batch["audio_seconds"], batch["speech_seconds"]])
            if engine.global_steps == step:
                continue  # mid-accumulation: DeepSpeed steps the optimizer every --grad-accum micro-batches
            step = engine.global_steps
            bar.update(1)
            if step % cfg["log_every"] == 0 or step == cfg["max_steps"]:
                elapsed = time.perf_counter() - t_window
                totals = torch.cat([loss_sum.double().view(1), window.to(engine.device)])
                torch.distributed.all_reduce(totals)  # collective: all ranks, on log steps only
                loss_total, batches_all, samples_all, utterances_all, audio_all, speech_all = totals.tolist()
                row = dict(step=step, loss=loss_total / batches_all, lr=engine.get_lr()[0], grad_norm=float(engine.get_global_grad_norm() or 0.0),
                           loss_scale=loss_scale(engine), skipped_steps=engine.skipped_steps,
                           step_seconds=elapsed / cfg["log_every"], samples_per_s=samples_all / elapsed,
                           audio_seconds_per_s=audio_all / elapsed, speech_seconds_per_s=speech_all / elapsed,
                           packing_factor=utterances_all / samples_all, epoch=epoch, skipped_samples=skipped_total(),
                           nonfinite_batches=nonfinite)
                metrics.log("train", **row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_per_s']:.1f}")
                train_seconds += elapsed
                loss_sum.zero_()
                window.zero_()
                t_window = time.perf_counter()
            signalled = torch.tensor([float(bool(caught))], device=engine.device)
            torch.distributed.all_reduce(signalled, op=torch.distributed.ReduceOp.MAX)  # collective: one signalled rank stops all
            if signalled.item():
                say(f"step {step}: {caught[0] if caught else 'another rank was signalled'}: checkpointing and stopping")
            stop_job = bool(signalled.item()) or (cfg["stop_after_steps"] is not None and step - start_step >= cfg["stop_after_steps"])
            done = step >= cfg["max_steps"] or stop_job
            if step % cfg["eval_every"] == 0 or step == cfg["max_steps"]:
                stopped_early = evaluate()
                done = done or stopped_early
            if done or step % cfg["eval_every"] == 0:
                checkpoint()
                t_window = time.perf_counter()
            if done:
                break
        else:  # the epoch's batches are used up: the next epoch deals a new shard permutation
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()

    # ----------------------------------------------------------------------------------------- final export
    best = stopper.best_scores or {}
    summary = dict(step=step, finished=stopped_early or step >= cfg["max_steps"], interrupted=caught[0] if caught else None,
                   best_step=stopper.best_step, best_metric=cfg["metric"], best_value=stopper.best, best_wer=best.get("wer"),
                   best_cer=best.get("cer"), stopped_early=stopped_early, train_seconds=round(train_seconds, 3),
                   total_seconds=round(time.perf_counter() - t_start, 3))
    metrics.log("summary", **summary)
    metrics.close()
    if dist.is_main():  # what a job scheduler reads to decide whether to requeue: finished runs are not restarted
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if stopper.best is not None and (out / "best").is_dir():  # best/ uploads to the Hub as it is
            trained_on = describe_shards(cfg["train_shards"])
            write_model_card(out / "best", language=language or "en", base_model=cfg["model"],
                             datasets=trained_on["datasets"], hours=trained_on["hours"], scores=stopper.best_scores,
                             normalizer=cfg["text_normalizer"], command=training_command(sys.argv))
    if stopper.best is not None:
        say(f"best {cfg['metric']} {stopper.best:.4f} at step {stopper.best_step}: {out / 'best'}")
    torch.distributed.barrier()  # nobody leaves while rank 0 still writes


if __name__ == "__main__":
    run(main)

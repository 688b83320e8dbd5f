"""Training helpers for `launch/train.py`: its options resolved and checked (`resolve_options`: --resume,
DeepSpeed's "auto" values, every problem at once), the run's state, the train rows, checkpoints that carry the data
stream's position, validation with rank 0's decision, and the end-of-run records.

`RunState` is everything a run is at (step, data epoch and position, timers, counters, early stopping): the
loop moves it, `save_run_checkpoint` writes it as `trainer_state.json`, the metrics rows read it, `--resume`
restores it. Functions marked "collective" must be called by every rank at the same point.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from wdsbr import dist
from wdsbr.augment import parse_speeds
from wdsbr.data import SkipCounter, Source, parse_sources
from wdsbr.dist import say
from wdsbr.engine import (
    ConfigError,
    device_type,
    environment_summary,
    latest_checkpoint,
    load_ds_config,
    loss_scale,
    resolve_ds_config,
    save_checkpoint,
)
from wdsbr.evaluation import EarlyStopping, gather, run_validation
from wdsbr.export import export_and_score, require_export_extra
from wdsbr.ggml import check_ggml_source, export_ggml_and_score
from wdsbr.lm import LMFusion, load_lm
from wdsbr.longform import Recording, list_recordings, run_long_form
from wdsbr.lora import check_lora
from wdsbr.metrics import MetricsLog
from wdsbr.model import check_model, language_code, save_model_atomic
from wdsbr.modelcard import describe_shards, training_command, write_model_card
from wdsbr.options import METRICS, TrainOptions, export_formats
from wdsbr.scoring import SCORE_KEYS, load_normalizer, score_all
from wdsbr.shards import read_sentences
from wdsbr.streams import count_samples, is_url, list_shards


@dataclass
class RunState:
    """Where the run stands. The saved fields are `trainer_state.json` in every checkpoint."""

    stopper: EarlyStopping
    seed: int = 0
    step: int = 0  # optimizer steps
    epoch: int = 0  # data epoch: which shard order the stream reads
    batch_in_epoch: int = 0  # micro-batches of this epoch consumed (a resume skips exactly these)
    skipped_samples: int = 0  # bad samples skipped by the jobs this run resumes
    train_seconds: float = 0.0  # wall-clock of the train windows (evaluation and checkpoints excluded)
    nonfinite_batches: int = 0  # NaN/inf micro-batches skipped on every rank
    source_samples: dict = field(default_factory=dict)  # utterances shown by source, every rank, earlier jobs
    sources: list = field(default_factory=list)  # the training sources' names (--train-shards NAME=…)
    shown_here: Counter = field(default_factory=Counter)  # utterances this rank showed by source in this job
    parameters: dict = field(default_factory=dict)  # trainable and total parameters, LoRA's settings (lora.describe)
    start_step: int = 0  # this job's first step (for --stop-after-steps); not saved
    stopped_early: bool = False
    done: bool = False

    @classmethod
    def resumed(cls, saved: dict, seed: int, sources: list[str]) -> RunState:
        """The state a checkpoint's `trainer_state.json` holds; `seed` is the one this job's stream uses."""
        return cls(
            stopper=EarlyStopping.from_state_dict(saved["early_stopping"]),
            seed=seed,
            step=saved["step"],
            epoch=saved["epoch"],
            batch_in_epoch=saved["batch_in_epoch"],
            skipped_samples=saved["skipped_samples"],
            train_seconds=saved["train_seconds"],
            nonfinite_batches=saved.get("nonfinite_batches", 0),
            source_samples=saved.get("source_samples", {}),
            sources=sources,
            start_step=saved["step"],
        )


def make_run_folder(output_dir: str | None, options: dict, ds_config: dict, notes: list[str]) -> Path:
    """Collective: all ranks agree on the run folder (rank 0's timestamp when none is given); rank 0 creates it,
    prints the configuration notes and writes the resolved `config.json`."""
    stamp = [output_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}"]
    torch.distributed.broadcast_object_list(stamp, src=0)  # collective: all ranks
    out = Path(stamp[0])
    if dist.is_main():
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        for note in notes:
            say(note)
        (out / "config.json").write_text(
            json.dumps(
                {
                    "options": {k: v for k, v in options.items() if k != "local_rank"},
                    "deepspeed": ds_config,
                    "environment": environment_summary(),
                },
                indent=2,
            )
        )
    return out


def skipped_total(skipped: SkipCounter, state: RunState, device: torch.device) -> int:
    """Collective: all ranks. Samples skipped by every rank's loader, over the whole run (resumed jobs included)."""
    count = torch.tensor([skipped.total()], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(count)  # collective: all ranks
    return state.skipped_samples + int(count.item())


def source_samples(state: RunState, device: torch.device) -> dict[str, int]:
    """Collective: all ranks. Utterances shown by source since the run began: every rank's, resumed jobs included."""
    shown = torch.tensor([state.shown_here[name] for name in state.sources], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(shown)  # collective: all ranks
    return {name: state.source_samples.get(name, 0) + int(n) for name, n in zip(state.sources, shown.tolist())}


def save_run_checkpoint(
    engine, out: Path, state: RunState, skipped: SkipCounter, batches_per_rank: int, keep: int
) -> None:
    """Collective: all ranks. DeepSpeed state + where the data stream and early stopping stand."""
    at_end = state.batch_in_epoch == batches_per_rank  # then resume at the start of the next epoch
    trainer_state = {
        "step": state.step,
        "epoch": state.epoch + at_end,
        "batch_in_epoch": 0 if at_end else state.batch_in_epoch,
        "seed": state.seed,
        "early_stopping": state.stopper.state_dict(),
        "skipped_samples": skipped_total(skipped, state, engine.device),
        "train_seconds": state.train_seconds,
        "nonfinite_batches": state.nonfinite_batches,
        "source_samples": source_samples(state, engine.device),
    }
    save_checkpoint(engine, out / "checkpoints", state.step, trainer_state, keep)  # collective: all ranks


class StepMeter:
    """What the loop did since the last train row: summed loss, micro-batches, samples, utterances, audio and
    speech seconds, on device (no host sync per micro-batch), the wall-clock window they took, how long each
    rank waited for data (`data_wait_seconds`, one number per rank: the rank that makes the others wait), and
    the samples the epoch repeated to fill its last batches (`repeated_samples`, `repeated_keys`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), device=device)
        self.counts = torch.zeros(6, dtype=torch.float64)
        self.repeated: list[str] = []  # keys this rank trained on a second time this epoch (see make_train_loader)
        self.data_wait = 0.0  # seconds this rank waited for its next batch: a slow reader shows here
        self.restart()

    def timed(self, loader) -> Iterator[dict]:
        """The loader's batches, adding the time this rank waits for each one to `data_wait`."""
        batches = iter(loader)
        try:
            while True:
                start = time.perf_counter()
                batch = next(batches, None)
                self.data_wait += time.perf_counter() - start
                if batch is None:
                    return
                yield batch
        finally:  # closed early (the run stopped): so is the loader's stream, and its workers end now
            if hasattr(batches, "close"):
                batches.close()

    def restart(self) -> None:
        """Open a new timing window (after an evaluation or checkpoint, whose time is not training time)."""
        self.t_window = time.perf_counter()

    def add(self, loss: torch.Tensor, batch: dict) -> None:
        self.loss_sum += loss.float()  # no .item(): it would sync the GPU every micro-batch
        self.counts += torch.tensor(
            [
                1,
                len(batch["keys"]),
                batch["utterances"],
                batch["audio_seconds"],
                batch["speech_seconds"],
                len(batch["repeated"]),
            ]
        )
        self.repeated += batch["repeated"]

    def row(self, engine, state: RunState, skipped: SkipCounter, log_every: int) -> dict:
        """Collective: all ranks. The train row over every rank's window; adds the window to `state.train_seconds`."""
        elapsed = time.perf_counter() - self.t_window
        waits = torch.zeros(dist.world_size(), dtype=torch.float64)
        waits[dist.rank()] = self.data_wait  # summed below: every rank's own wait, in rank order
        totals = torch.cat([self.loss_sum.double().view(1), self.counts.to(self.device), waits.to(self.device)])
        torch.distributed.all_reduce(totals)  # collective: all ranks, on log steps only
        loss_total, batches, samples, utterances, audio, speech, repeated = totals[:7].tolist()
        repeated_keys = [None] * dist.world_size()
        if repeated:  # the epoch's wrap-around and top-ups: rare, so the keys travel only then
            torch.distributed.all_gather_object(
                repeated_keys, self.repeated
            )  # collective: all ranks (all see `repeated`)
        row = dict(
            step=state.step,
            loss=loss_total / batches,
            lr=engine.get_lr()[0],
            grad_norm=float(engine.get_global_grad_norm() or 0.0),
            loss_scale=loss_scale(engine),
            skipped_steps=engine.skipped_steps,
            step_seconds=elapsed / log_every,
            samples_per_s=samples / elapsed,
            audio_seconds_per_s=audio / elapsed,
            speech_seconds_per_s=speech / elapsed,
            packing_factor=utterances / samples,
            epoch=state.epoch,
            skipped_samples=skipped_total(skipped, state, engine.device),
            nonfinite_batches=state.nonfinite_batches,
            source_samples=source_samples(state, engine.device),
            repeated_samples=int(repeated),
            repeated_keys=sorted(k for keys in repeated_keys if keys for k in keys),
            data_wait_seconds=[round(wait, 3) for wait in totals[7:].tolist()],
            trainable_params=state.parameters.get("trainable_params"),
            total_params=state.parameters.get("total_params"),
        )
        state.train_seconds += elapsed
        self.loss_sum.zero_()
        self.counts.zero_()
        self.repeated = []
        self.data_wait = 0.0
        self.restart()
        return row


def any_rank_signalled(caught: list[str], device: torch.device) -> bool:
    """Collective: all ranks. True when any rank caught SIGTERM/SIGUSR1: one signalled rank stops them all."""
    signalled = torch.tensor([float(bool(caught))], device=device)
    torch.distributed.all_reduce(signalled, op=torch.distributed.ReduceOp.MAX)  # collective: all ranks
    return bool(signalled.item())


def say_left_out(rejected: list[dict]) -> None:
    """Name each --val-long-form recording that cannot be scored (rejection rows of `wdsbr.longform`)."""
    for row in rejected:
        say(f"--val-long-form: {row['source']}: {row['reason']} ({row['detail']}): left out")


def long_form_scores(
    model,
    processor,
    recordings: list[Recording],
    gen_kwargs: dict,
    dtype: torch.dtype,
    device: torch.device,
    normalizer: str,
) -> dict | None:
    """Collective: all ranks. --val-long-form: this rank's share of the recordings transcribed whole (sequential
    long-form decoding with timestamps, `wdsbr.longform`); rank 0 gets `long_wer`, `long_cer`, `long_recordings`
    and `long_seconds` over every rank's, the others None. A recording that cannot be read is left out, named."""
    was_training, start = model.training, time.perf_counter()
    model.eval()
    results, _, unreadable = run_long_form(model, processor, recordings, gen_kwargs, dtype, device)
    model.train(was_training)
    say_left_out(unreadable)
    results, _, _ = gather(results, 0.0, 0)  # collective: all ranks
    if not dist.is_main():
        return None
    scores = score_all(results, normalizer)
    return {
        "long_wer": scores["wer"],
        "long_cer": scores["cer"],
        "long_recordings": scores["samples"],
        "long_seconds": round(time.perf_counter() - start, 3),
    }


def validate(
    engine,
    val_loaders: dict,
    processor,
    gen_kwargs: dict,
    dtype: torch.dtype,
    state: RunState,
    *,
    normalizer: str,
    out: Path,
    language: str | None,
    metrics: MetricsLog,
    long_form: list[Recording] | None = None,
) -> bool:
    """Collective: all ranks. Score every validation set ({name: loader}), each on its own (wer/NAME, cer/NAME,
    when there are several or the one is named) and pooled (wer, cer, the loss), and with `long_form` this rank's
    share of the --val-long-form recordings; rank 0 records it, saves a new best/ and decides whether to stop,
    and broadcasts the decision (True: stop early)."""
    results, loss_sum, tokens, seconds, by_set = [], 0.0, 0, 0.0, {}
    for name, loader in val_loaders.items():
        found, found_loss, found_tokens, took = run_validation(
            engine.module, loader, processor.tokenizer, gen_kwargs, dtype, engine.device
        )
        found, found_loss, found_tokens = gather(found, found_loss, found_tokens)  # collective: all ranks
        by_set[name] = found
        results, loss_sum, tokens, seconds = (
            results + found,
            loss_sum + found_loss,
            tokens + found_tokens,
            seconds + took,
        )
    long_scores = (
        long_form_scores(engine.module, processor, long_form, gen_kwargs, dtype, engine.device, normalizer)
        if long_form is not None
        else {}
    )  # collective: all ranks
    decision = [None]
    if dist.is_main():
        scores = score_all(results, normalizer)  # wer/cer + raw, normalised and Whisper-basic WER, labelled
        scores["loss"] = loss_sum / max(1, tokens)
        if list(by_set) != ["validation"]:  # several sets, or a named one: each on its own too
            for name, found in by_set.items():
                alone = score_all(found, normalizer)
                scores[f"wer/{name}"], scores[f"cer/{name}"] = alone["wer"], alone["cer"]
        scores.update(long_scores)
        is_best, save_error = state.stopper.update(scores, state.step), None
        if is_best:
            try:
                save_model_atomic(engine.module, processor, out / "best", language)
            except OSError as error:  # full disk, read-only folder: the previous best/ is intact; say so, go on
                save_error = f"{out / 'best'}: not updated ({error}); the previous best/ is kept"
                say(f"error: step {state.step}: {save_error}")
        metrics.log(
            "eval",
            step=state.step,
            val_loss=scores["loss"],
            wer=scores["wer"],
            cer=scores["cer"],
            samples=scores["samples"],
            eval_seconds=round(seconds, 3),
            is_best=is_best,
            bad_evaluations=state.stopper.bad_evaluations,
            best_save_error=save_error,
            **{name: scores[name] for name in SCORE_KEYS},
            **{name: value for name, value in scores.items() if "/" in name},
            **long_scores,
        )
        long_line = (
            f" long_wer {long_scores['long_wer']:.4f} ({long_scores['long_recordings']} recordings)"
            if long_scores
            else ""
        )
        say(
            f"step {state.step}: val_loss {scores['loss']:.4f} wer {scores['wer']:.4f} cer {scores['cer']:.4f}"
            f" ({scores['samples']} samples, {seconds:.1f} s){long_line}{' new best' if is_best else ''}"
        )
        decision = [state.stopper.should_stop]
    torch.distributed.broadcast_object_list(decision, src=0)  # collective: rank 0's decision for all
    return decision[0]


def finish(
    state: RunState,
    opts: TrainOptions,
    out: Path,
    language: str | None,
    metrics: MetricsLog,
    total_seconds: float,
    interrupted: str | None,
) -> dict:
    """The summary row and `summary.json` (what a job scheduler reads to decide whether to requeue: a finished
    run is not restarted), and best/'s model card; rank 0 writes, every rank returns the summary."""
    stopper, best, decoding = state.stopper, state.stopper.best_scores or {}, opts.decoding
    exports = {}
    if (
        opts.checkpoints.export and dist.is_main() and stopper.best is not None and (out / "best").is_dir()
    ):  # --export ct2,ggml
        settings = dict(
            shards=[s.shards for s in validation_sets(opts.data.val_shards)],  # every set: the pooled WER
            language=language,
            normalizer=decoding.text_normalizer,
            num_beams=decoding.num_beams,
            max_new_tokens=decoding.generation_max_length,
            num_workers=opts.runtime.num_workers,
            batch_size=opts.validation.eval_batch_size or opts.optim.batch_size,
        )
        formats = export_formats(opts.checkpoints.export)
        if "ct2" in formats:
            say(f"exporting {out / 'best'} to CTranslate2 and scoring it with faster-whisper on the validation shards")
            exports["export"] = export_and_score(out / "best", out / "best-ct2", **settings)
        if "ggml" in formats:
            say(f"exporting {out / 'best'} to ggml and scoring it with whisper.cpp on the validation shards")
            exports["export_ggml"] = export_ggml_and_score(
                out / "best", out / "best-ggml.bin", **settings, threads=torch.get_num_threads()
            )
    summary = dict(
        step=state.step,
        finished=state.stopped_early or state.step >= opts.optim.max_steps,
        interrupted=interrupted,
        best_step=stopper.best_step,
        best_metric=opts.validation.metric,
        best_value=stopper.best,
        best_wer=best.get("wer"),
        best_cer=best.get("cer"),
        stopped_early=state.stopped_early,
        train_seconds=round(state.train_seconds, 3),
        total_seconds=round(total_seconds, 3),
        **state.parameters,
        **exports,
    )
    metrics.log("summary", **summary)
    metrics.close()
    if dist.is_main():
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if stopper.best is not None and (out / "best").is_dir():  # best/ uploads to the Hub as it is
            sources = training_sources(opts.data.train_shards)
            described = [describe_shards(source.shards) for source in sources]
            listed = [  # each source's hours: its split's, from its manifest
                {
                    "name": s.name,
                    "shards": str(s.shards),
                    "factor": s.factor,
                    "hours": d["hours"].get(_split_of(s.shards)),
                }
                for s, d in zip(sources, described)
            ]
            write_model_card(
                out / "best",
                language=language or "en",
                base_model=opts.whisper.model,
                datasets=list(dict.fromkeys(name for d in described for name in d["datasets"])),
                hours=described[0]["hours"] if len(sources) == 1 else {"train": sum(s["hours"] or 0.0 for s in listed)},
                sources=listed if len(sources) > 1 or sources[0].factor != 1 else None,
                scores=stopper.best_scores,
                normalizer=decoding.text_normalizer,
                command=training_command(sys.argv),
                export=exports.get("export"),
                export_ggml=exports.get("export_ggml"),
                parameters=state.parameters,
            )
    if state.stopped_early:
        best_so_far = (
            f"best {stopper.best:.4f} at step {stopper.best_step}" if stopper.best is not None else "no finite value"
        )
        say(
            f"stopped early at step {state.step}: {stopper.metric} did not improve for {stopper.patience} evaluations "
            f"({best_so_far})"
        )
    if stopper.best is not None:
        say(f"best {opts.validation.metric} {stopper.best:.4f} at step {stopper.best_step}: {out / 'best'}")
    return summary


def _raise_all(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


def check_exports(value: str, model: str) -> None:
    """--export: known formats, their runtimes installed, and for ggml a vocabulary whisper.cpp can number."""
    formats = export_formats(value)
    require_export_extra()
    if "ggml" in formats and Path(model).expanduser().is_dir():  # a hub id: only checked when best/ is exported
        check_ggml_source(model)


def val_lm_fusion(val, decoding, tokenizer, normalize):
    """--val-lm: the n-gram LM fused into validation's search, at --val-lm-alpha and --val-lm-beta."""
    return LMFusion(load_lm(val.val_lm), tokenizer, normalize, val.val_lm_alpha, val.val_lm_beta, decoding.num_beams)


def resolve_options(opts: TrainOptions, explicit: set[str]) -> tuple[TrainOptions, dict, list[str]]:
    """The run's options (with --resume, the saved ones but for those the command line gave: `explicit`), the
    DeepSpeed config with its "auto" values filled, and notes to print; no DeepSpeed config for a run that finished
    already (the note says so). Everything is checked before any heavy work: one ConfigError lists every problem."""
    problems = []
    out = Path(opts.checkpoints.output_dir) if opts.checkpoints.output_dir else None
    if (
        opts.checkpoints.resume
        and out
        and (out / "summary.json").is_file()
        and json.loads((out / "summary.json").read_text())["finished"]
    ):
        return opts, {}, [f"{out} finished already (see {out / 'summary.json'}): nothing to resume"]
    if opts.checkpoints.resume:
        saved = out / "config.json" if out else None
        if saved is None or not saved.is_file() or latest_checkpoint(out / "checkpoints") is None:
            raise ConfigError(f"--resume: no checkpoint to resume in {out or '(give --output-dir)'}")
        previous = json.loads(saved.read_text())["options"]
        kept = opts.not_resumed() | explicit  # the command line wins; the job's own options are never restored
        opts = opts.replace({name: value for name, value in previous.items() if name not in kept})
    elif out and latest_checkpoint(out / "checkpoints") is not None:
        problems.append(f"{out} already holds a run: pass --resume to continue it or choose another --output-dir")
    data, optim, val, lora = opts.data, opts.optim, opts.validation, opts.lora
    if val.metric == "long_wer" and not val.val_long_form:
        problems.append("--metric long_wer: needs --val-long-form DATA, the long recordings to score")
    try:
        names = [s.name for s in validation_sets(data.val_shards)]
        metrics = [*METRICS, *(f"{score}/{name}" for name in names for score in ("wer", "cer"))]
        if val.metric not in metrics:
            problems.append(f"--metric {val.metric}: not one of {', '.join(metrics)}")
    except ValueError:
        pass  # --val-shards says what is wrong
    for name, value in (
        ("batch_size", optim.batch_size),
        ("grad_accum", optim.grad_accum),
        ("max_steps", optim.max_steps),
        ("eval_every", val.eval_every),
        ("log_every", opts.logging.log_every),
        ("keep_checkpoints", opts.checkpoints.keep_checkpoints),
    ):
        if value < 1:
            problems.append(f"--{name.replace('_', '-')} {value}: must be at least 1")
    for name, check in (
        ("language", lambda: language_code(opts.whisper.language)),
        ("text_normalizer", lambda: load_normalizer(opts.decoding.text_normalizer)),
        ("train_shards", lambda: check_sources(data.train_shards, data.epoch_samples)),
        ("val_shards", lambda: [list_shards(s.shards) for s in validation_sets(data.val_shards)]),
        ("speed_perturb", lambda: parse_speeds(opts.augment.speed_perturb or "1")),
        ("export", lambda: opts.checkpoints.export and check_exports(opts.checkpoints.export, opts.whisper.model)),
        ("val_long_form", lambda: val.val_long_form and list_recordings(val.val_long_form)),
        ("val_lm", lambda: val.val_lm and load_lm(val.val_lm)),
        ("lora", lambda: _raise_all(check_lora(lora.lora, lora.lora_alpha, lora.lora_dropout, lora.lora_targets))),
    ):
        try:
            check()
        except (OSError, ValueError) as error:
            problems.append(f"--{name.replace('_', '-')}: {error}".replace(f"--{name.replace('_', '-')}: --", "--"))
    settings, explicit_settings = opts.deepspeed_settings(explicit)
    try:
        ds_config, effective, notes = resolve_ds_config(
            load_ds_config(optim.ds_config_path),
            settings,
            explicit_settings,
            world_size=dist.world_size(),
            device_type=device_type(),
        )
    except ConfigError as error:  # its problems, less the options reported above already
        reported = {problem.split(" ")[0] for problem in problems}
        problems += [problem for problem in str(error).split("; ") if problem.split(" ")[0] not in reported]
        ds_config, effective, notes = {}, settings, []
    try:  # last, and without the network when anything else is wrong: a typo is reported at once
        check_model(
            opts.whisper.model,
            opts.whisper.language if not any(p.startswith("--language") for p in problems) else None,
            load=not problems,
        )
    except (OSError, ValueError) as error:
        problems.append(f"--model: {error}")
    if problems:
        raise ConfigError("; ".join(problems))
    opts = opts.replace(
        dict(
            batch_size=effective["micro_batch_size"],
            grad_accum=effective["grad_accum_steps"],
            lr=effective["lr"],
            precision=effective["precision"],
        )
    )  # what the JSON fixed, if it did
    return opts, ds_config, notes


def training_sources(specs: Sequence[str]) -> list[Source]:
    """--train-shards, each NAME=SPEC@FACTOR (a plain SPEC: the source "train" at factor 1)."""
    return parse_sources(specs, "--train-shards", "train")


def validation_sets(specs: Sequence[str]) -> list[Source]:
    """--val-shards, each NAME=SPEC (a plain SPEC: the set "validation")."""
    return parse_sources(specs, "--val-shards", "validation", factors=False)


def check_sources(specs: Sequence[str], epoch_samples: int | None) -> None:
    """Each training source's shards exist and have sample counts (manifest.json, tar headers), which an epoch
    needs; only one plain source may go without them, given --epoch-samples (remote shards without a manifest)."""
    sources = training_sources(specs)
    if len(sources) == 1 and sources[0].factor == 1 and epoch_samples:
        list_shards(sources[0].shards)
        return
    for source in sources:
        try:
            count_samples(list_shards(source.shards))  # or says how
        except ValueError as error:
            raise ValueError(f"{source.name}: {error}" if len(sources) > 1 else str(error)) from None


def say_overlap(sources: list[Source], val_sets: list[Source], normalize) -> None:
    """Rank 0: how many sentences each training source shares with each validation set, compared after the
    scoring normaliser. A shared sentence makes validation WER optimistic; tools/shard_corpus.py
    --exclude-sentences keeps them out. Local shards only (remote ones would be downloaded whole to count)."""
    if not dist.is_main():
        return
    local = [s for s in [*sources, *val_sets] if not any(is_url(shard) for shard in list_shards(s.shards))]
    sentences = {id(s): {normalize(text) for text in read_sentences(s.shards)} - {""} for s in local}
    for source in sources:
        for val_set in val_sets:
            if id(source) in sentences and id(val_set) in sentences:
                shared = len(sentences[id(source)] & sentences[id(val_set)])
                say(
                    f"overlap: training source {source.name} shares {shared} sentences with validation set "
                    f"{val_set.name}" + (" (tools/shard_corpus.py --exclude-sentences removes them)" if shared else "")
                )


def _split_of(shards) -> str:
    """The split a source's shards are (`shards/cv/train` or `shards/cv/train/shard-{…}.tar`: "train")."""
    path = Path(str(shards))
    return path.name if not path.suffix else path.parent.name

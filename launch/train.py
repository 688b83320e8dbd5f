"""Fine-tune Whisper with DeepSpeed ZeRO-2 on WebDataset shards; rank 0 evaluates WER, stops early, saves best/.

    deepspeed launch/train.py --deepspeed configs/ds_zero2.json
    deepspeed --num_gpus 8 launch/train.py --deepspeed configs/ds_zero2.json --model openai/whisper-small \
        --train-shards shards/train --val-shards shards/validation --output-dir runs/br-small --max-steps 5000
    deepspeed launch/train.py --deepspeed configs/ds_zero2.json --output-dir runs/br-small --resume

Sections, in order: config → distributed → model → data → engine → resume → loop → final export.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies("deepspeed")  # a plain `python` without the set-up: one line naming the fix, no traceback

import click  # noqa: E402

from wdsbr import dist  # noqa: E402
from wdsbr.cli import command, run  # noqa: E402
from wdsbr.options import TrainOptions, explicit_options  # noqa: E402  (light: --help imports no torch)

caught: list[str] = []  # SIGTERM (scancel, a launcher stopping) or SIGUSR1 (Slurm's warning before the time limit)


# ------------------------------------------------------------------------------------------------------ config
@command(TrainOptions.sections())
@TrainOptions.click_options()
def main(**values):
    """Fine-tune Whisper on Breton (or any language) from WebDataset shards with DeepSpeed ZeRO-2."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):  # from the first moment: a signal during start-up is kept too
        signal.signal(signum, lambda number, _frame: caught.append(signal.Signals(number).name))
    from wdsbr.training import resolve_options  # torch, transformers, deepspeed: only once the options are read

    opts, ds_config, notes = resolve_options(
        TrainOptions.from_flat(values), explicit_options(click.get_current_context())
    )
    if ds_config:
        train(opts, ds_config, notes)
    else:  # a finished run: say so and leave
        dist.say(notes[0])


def train(opts: TrainOptions, ds_config: dict, notes: list[str]) -> None:
    import time

    import torch

    from wdsbr.augment import stable_seed
    from wdsbr.data import EpochStream, LoaderOptions, SkipCounter, make_eval_loader, make_train_loader
    from wdsbr.engine import build_engine, compute_dtype, init_distributed, load_checkpoint, training_step
    from wdsbr.evaluation import EarlyStopping, generate_kwargs
    from wdsbr.longform import list_recordings, my_share
    from wdsbr.lora import apply_lora
    from wdsbr.lora import describe as describe_parameters
    from wdsbr.metrics import MetricsLog, progress_bar
    from wdsbr.model import (
        enable_checkpointing,
        is_multilingual,
        language_code,
        load_model,
        load_processor,
        quiet_libraries,
    )
    from wdsbr.scoring import load_normalizer
    from wdsbr.training import (
        RunState,
        StepMeter,
        any_rank_signalled,
        finish,
        make_run_folder,
        save_run_checkpoint,
        say_left_out,
        say_overlap,
        training_sources,
        val_lm_fusion,
        validate,
        validation_sets,
    )

    t_start = time.perf_counter()
    quiet_libraries()
    data, optim, val, saving = opts.data, opts.optim, opts.validation, opts.checkpoints
    # ------------------------------------------------------------------------------------------ distributed
    init_distributed(opts.runtime.dist_timeout_minutes)
    out = make_run_folder(saving.output_dir, opts.as_dict(), ds_config, notes)  # collective: all ranks
    torch.manual_seed(optim.seed)

    # ------------------------------------------------------------------------------------------------ model
    processor = load_processor(opts.whisper.model, opts.whisper.language)
    model = load_model(opts.whisper.model)
    language = (
        language_code(opts.whisper.language) if is_multilingual(opts.whisper.model, model.generation_config) else None
    )
    model.config.use_cache = not optim.gradient_checkpointing
    if optim.gradient_checkpointing:
        enable_checkpointing(model)
    model.model.encoder.requires_grad_(not optim.freeze_encoder)  # --freeze-encoder: train the decoder only
    if opts.lora.lora:  # --lora: adapters train, the base weights stay frozen; best/ gets the merged model
        lora = opts.lora
        model = apply_lora(model, lora.lora, lora.lora_alpha, lora.lora_dropout, lora.lora_targets)
    parameters = describe_parameters(model)
    dist.say(f"training {parameters['trainable_params']:,} of {parameters['total_params']:,} parameters")

    # ------------------------------------------------------------------------------------------------- data
    skipped = SkipCounter()
    stream = LoaderOptions(
        processor.tokenizer,
        list(processor.tokenizer.prefix_tokens),
        n_mels=model.config.num_mel_bins,
        micro_batch_size=optim.batch_size,
        num_workers=opts.runtime.num_workers,
        rank=dist.rank(),
        world_size=dist.world_size(),
        skip_counter=skipped,
        normalize=load_normalizer(opts.decoding.text_normalizer),
        max_label_tokens=model.config.max_target_positions,
        decoder_start_token_id=model.config.decoder_start_token_id,
        seed=optim.seed,
        shuffle_buffer=data.shuffle_buffer,
        epoch_samples=data.epoch_samples,
        pack=data.pack_fraction if data.pack else 0.0,
        spec_augment=opts.augment.spec_augment,
        speed_perturb=opts.augment.speed_perturb,
        timestamps=data.timestamps,
        prev_text=data.prev_text,
    )
    sources = training_sources(data.train_shards)  # --train-shards NAME=SPEC@FACTOR, repeated
    val_stream = dataclasses.replace(stream, micro_batch_size=val.eval_batch_size or optim.batch_size)
    val_sets = validation_sets(data.val_shards)  # --val-shards NAME=SPEC, repeated
    val_loaders = {s.name: make_eval_loader(s.shards, val_stream) for s in val_sets}
    say_overlap(sources, val_sets, stream.normalize)  # rank 0: sentences a training source shares with a set
    long_form = None  # --val-long-form: this rank's share of the long recordings, each scored whole
    if val.val_long_form:
        recordings, rejected = list_recordings(val.val_long_form)
        long_form = my_share(recordings, dist.rank(), dist.world_size())
        say_left_out(rejected)

    # ----------------------------------------------------------------------------------------------- engine
    engine = build_engine(model, ds_config)
    dtype = compute_dtype(engine)
    gen_kwargs = generate_kwargs(language, opts.decoding.num_beams, opts.decoding.generation_max_length)
    if val.val_lm:  # --val-lm: validation decodes with the n-gram LM fused into its search
        gen_kwargs["logits_processor"] = [val_lm_fusion(val, opts.decoding, processor.tokenizer, stream.normalize)]

    # ----------------------------------------------------------------------------------------------- resume
    names = [source.name for source in sources]
    state = RunState(EarlyStopping(val.metric, val.min_delta, val.patience), seed=optim.seed, sources=names)
    if saving.resume:
        state = RunState.resumed(load_checkpoint(engine, out / "checkpoints"), optim.seed, names)  # collective
        dist.say(
            f"resumed from step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch}), "
            f"best {state.stopper.metric} {state.stopper.best}"
        )
    state.parameters = parameters

    # ------------------------------------------------------------------------------------------------- loop
    log_every, eval_every, max_steps = opts.logging.log_every, val.eval_every, optim.max_steps
    metrics, meter, bar = MetricsLog(out), StepMeter(engine.device), progress_bar(max_steps, state.step)
    epochs = EpochStream(  # one exact epoch after another, the next one's workers started before this one ends
        lambda epoch, start: make_train_loader(sources, stream, epoch=epoch, start_batch=start),
        state.epoch,
        state.batch_in_epoch,
    )
    batches = meter.timed(epochs)
    for epoch, batch in batches:
        if epoch != state.epoch:  # the last epoch's batches are used up: this one reads the shards anew
            state.epoch, state.batch_in_epoch = epoch, 0
        torch.manual_seed(stable_seed(optim.seed, dist.rank(), state.epoch, state.batch_in_epoch))  # dropout
        loss = training_step(engine, batch)  # (LoRA's): drawn by stream position, the same after a resume
        state.batch_in_epoch += 1
        if loss is None:  # NaN/inf on some rank: skipped everywhere before touching the weights
            state.nonfinite_batches += 1
            dist.say(
                f"step {state.step}: non-finite loss, micro-batch skipped ({state.nonfinite_batches} so far): "
                f"{', '.join(batch['keys'][:4])}"
            )
            continue
        meter.add(loss, batch)
        state.shown_here.update(batch["sources"])
        if engine.global_steps == state.step:
            continue  # mid-accumulation: DeepSpeed steps the optimizer every --grad-accum micro-batches
        state.step = engine.global_steps
        bar.update(1)
        if state.step % log_every == 0 or state.step == max_steps:
            row = meter.row(engine, state, skipped, log_every)  # collective: all ranks
            metrics.log("train", **row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{row['samples_per_s']:.1f}")
        signalled = any_rank_signalled(caught, engine.device)  # collective: all ranks
        if signalled:
            dist.say(
                f"step {state.step}: {caught[0] if caught else 'another rank was signalled'}: checkpointing and "
                "stopping"
            )
        stop_job = signalled or (
            saving.stop_after_steps is not None and state.step - state.start_step >= saving.stop_after_steps
        )
        state.done = state.step >= max_steps or stop_job
        if state.step % eval_every == 0 or state.step == max_steps:
            state.stopped_early = validate(
                engine,
                val_loaders,
                processor,
                gen_kwargs,
                dtype,
                state,
                out=out,
                normalizer=opts.decoding.text_normalizer,
                language=language,
                metrics=metrics,
                long_form=long_form,
            )  # collective: all ranks
            state.done = state.done or state.stopped_early
        if state.done or state.step % eval_every == 0:
            save_run_checkpoint(
                engine, out, state, skipped, epochs.batches_per_rank, saving.keep_checkpoints
            )  # collective
            meter.restart()
        if state.done:
            break
    batches.close()  # the stream's workers end here
    bar.total = state.step if state.stopped_early else bar.total  # an early stop closes the bar where it stopped
    bar.close()

    # ----------------------------------------------------------------------------------------- final export
    finish(state, opts, out, language, metrics, time.perf_counter() - t_start, caught[0] if caught else None)
    torch.distributed.barrier()  # nobody leaves while rank 0 still writes


if __name__ == "__main__":
    run(main)

"""The Hugging Face recipe's training, for bench_train.py: `Seq2SeqTrainer` on a dataset prepared by `map`.

    python bench/hf_train.py --model M --dataset D --output-dir O --timings T.json [options]
    torchrun --nproc_per_node 2 bench/hf_train.py …            # 2 ranks (DDP, gloo on CPU)

The dataset D is the output of the blog's `map` (input_features + labels, `save_to_disk`), made by bench_train.py
from the same clips the wdsbr run reads from its shards. Settings mirror `launch/train.py`'s: AdamW (torch's
implementation, betas 0.9/0.999, eps 1e-8, no weight decay), clipping 1.0, linear warm-up then linear decay to
--max-steps, the given precision, no evaluation and no checkpoint during training. Rank 0 writes the wall-clock
time at the end of every optimizer step to T.json. --snapshot-steps 15,30 saves the model (save_pretrained) at those
steps under O/snapshots/step-N, for bench_time_to_wer.py to score; T.json's `snapshots` give each one's training
seconds (from the start of training, the time spent saving the earlier ones left out).

The GPU check's hf_trainer_small and hf_trainer_large parts (bench/gpu_check.py) run the same trainer
(`seq2seq_trainer`) in their own process:

  hf_trainer_small, hf_trainer_large
               `Seq2SeqTrainer` with these settings (torch AdamW, clipping 1.0, linear schedule) and the blog's
               collator on the same model and clips as the DeepSpeed parts (features computed once, as the
               recipe's `map` does before training), fp16 autocast on CUDA, same micro-batch (halved once on
               OOM): samples/s from synchronised step-end times after 3 warm-up steps, and wdsbr's ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DataCollatorSpeechSeq2SeqWithPadding  # noqa: E402  (also puts the checkout on sys.path)
from gpu_common import (  # noqa: E402
    Check,
    build_model,
    free_memory,
    gpu_memory,
    reset_peak_memory,
    rows_for,
    synchronize,
    without_rank_environment,
)

# torch, transformers and datasets are imported where used: gpu_check.py imports this module before it has checked
# that they are installed.


def seq2seq_trainer(
    model,
    processor,
    train_dataset,
    *,
    output_dir: str | Path,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    max_steps: int,
    precision: str,
    num_workers: int,
    seed: int,
    use_cpu: bool,
    pin_memory: bool = False,
    ddp_backend: str | None = None,
    callbacks: Sequence = (),
):
    """The recipe's `Seq2SeqTrainer` with the blog's collator and launch/train.py's settings (see the module
    docstring): `precision` is fp32, bf16 or fp16 (autocast), one optimizer step a batch, no evaluation, no
    checkpoint, one loss row at the end."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    arguments = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=lr,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max_steps,
        report_to="none",
        dataloader_num_workers=num_workers,
        dataloader_pin_memory=pin_memory,
        seed=seed,
        disable_tqdm=True,
        use_cpu=use_cpu,
        ddp_backend=ddp_backend,
    )
    return Seq2SeqTrainer(
        model=model,
        args=arguments,
        train_dataset=train_dataset,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id),
        processing_class=processor,
        callbacks=list(callbacks),
    )


def step_end_timer(clock: Callable[[], float] = time.time, wait: Callable[[], None] | None = None):
    """A TrainerCallback whose `times` gets clock() at the end of every optimizer step, after `wait()` when given
    (the GPU check: once the device has finished the step). time.time() by default, as launch/train.py's metrics
    rows measure it."""
    from transformers import TrainerCallback

    class StepEndTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if wait is not None:
                wait()
            self.times.append(clock())

    return StepEndTimes()


def snapshot_saver(steps: set[int], folder: Path, processor):
    """A TrainerCallback that saves the model at the end of the given optimizer steps (rank 0) and records, per
    snapshot, the training seconds so far: from the start of training, less the time spent saving."""
    from transformers import TrainerCallback

    class Snapshots(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict] = []
            self.start, self.saving = time.time(), 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step not in steps or int(os.environ.get("RANK", "0")) != 0:
                return
            began = time.time()
            out = folder / f"step-{state.global_step}"
            model.save_pretrained(out)
            processor.save_pretrained(out)
            self.rows.append(
                {"step": state.global_step, "train_seconds": began - self.start - self.saving, "model": str(out)}
            )
            self.saving += time.time() - began

    return Snapshots()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (the same tiny Whisper as the wdsbr run)")
    parser.add_argument("--dataset", required=True, help="mapped dataset folder (datasets.save_to_disk)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--timings", required=True, help="JSON file for rank 0's step end times")
    parser.add_argument("--batch-size", type=int, default=8, help="per rank")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per rank")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--language", default="br", help="transcript language (ignored by English-only models)")
    parser.add_argument("--seed", type=int, default=0, help="model init of new parts, data order (the trainer's seed)")
    parser.add_argument("--save-model", default=None, help="save the final model and processor here (rank 0)")
    parser.add_argument("--snapshot-steps", default="", help="comma-separated steps to save the model at (rank 0)")
    args = parser.parse_args()
    import datasets
    import torch
    import transformers
    from transformers import WhisperForConditionalGeneration

    from wdsbr.model import load_processor

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")

    processor = load_processor(args.model, language=args.language)
    model = WhisperForConditionalGeneration.from_pretrained(args.model)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    timer = step_end_timer()
    steps = {int(step) for step in args.snapshot_steps.split(",") if step}
    snapshots = snapshot_saver(steps, Path(args.output_dir) / "snapshots", processor)
    trainer = seq2seq_trainer(
        model,
        processor,
        datasets.load_from_disk(args.dataset),
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        precision=args.precision,
        num_workers=args.num_workers,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 else None,
        callbacks=[timer, snapshots] if steps else [timer],
    )
    result = trainer.train()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.timings).write_text(
            json.dumps(
                {
                    "step_end_times": timer.times,
                    "end_time": time.time(),
                    "train_loss": result.training_loss,
                    "train_runtime": result.metrics["train_runtime"],
                    "global_batch_size": args.batch_size * world_size,
                    "snapshots": snapshots.rows,
                }
            )
        )
        if args.save_model:
            trainer.model.save_pretrained(args.save_model)
            processor.save_pretrained(args.save_model)


# ---------------------------------------------------------------------------------- the GPU check's parts


class Cycled:
    """The recipe's mapped rows (input_features + labels) repeated to `length` items: one epoch is the whole run."""

    def __init__(self, rows: list[dict], length: int):
        self.rows, self.length = rows, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.rows[index % len(self.rows)]


def hf_trainer(check: Check, name: str) -> dict:
    """Seq2SeqTrainer on the same model shape and clips; see the module docstring."""
    import torch

    precision = "fp16" if check.cuda else "bf16"
    micro = check.micro_batch.get(name) or check.sizes.micro_batch or check.sizes.max_micro_batch[name] // 4
    try:
        result = run_hf_trainer(check, name, precision, micro)
    except torch.cuda.OutOfMemoryError:
        result = None
    if result is None:  # outside the except block: its traceback held the failed run's memory
        free_memory()
        result = {
            **run_hf_trainer(check, name, precision, max(1, micro // 2)),
            "note": f"micro-batch {micro} ran out of memory: halved",
        }
    ours = check.rates.get((name, precision))
    result["wdsbr_samples_per_s"] = ours
    result["wdsbr_vs_hf_trainer"] = ours / result["samples_per_s"] if ours else None
    return result


def run_hf_trainer(check: Check, name: str, precision: str, micro: int) -> dict:
    import torch

    spec = check.sizes.models[name]
    warmup, measured = check.sizes.hf_steps
    workers = min(4, check.workers) if check.sizes.hf_workers is None else check.sizes.hf_workers
    rows = [
        {"input_features": row["features"].numpy(), "labels": row["labels"]} for row in rows_for(check, spec["n_mels"])
    ]
    model = build_model(check, name)
    timer = step_end_timer(time.perf_counter, wait=synchronize)
    with without_rank_environment():
        trainer = seq2seq_trainer(
            model,
            check.processors[spec["n_mels"]],
            Cycled(rows, micro * (warmup + measured)),
            output_dir=check.tmp / f"hf-{name}",
            batch_size=micro,
            lr=1e-5,
            warmup_steps=1,
            max_steps=warmup + measured,
            precision=precision,
            num_workers=workers,
            seed=0,
            use_cpu=not check.cuda,
            pin_memory=check.cuda,
            callbacks=[timer],
        )
        reset_peak_memory()
        try:
            outcome = trainer.train()
        finally:
            del trainer, model
            free_memory()
    times = timer.times
    window = times[-1] - times[warmup - 1]
    samples = micro * (len(times) - warmup)
    return {
        "model": name,
        "precision": precision,
        "micro_batch": micro,
        "optimizer": "torch AdamW (adamw_torch)",
        "warmup_steps": warmup,
        "measured_steps": len(times) - warmup,
        "samples_per_s": samples / window,
        "audio_seconds_per_s": samples * check.mean_clip_seconds / window,
        "train_loss": outcome.training_loss,
        "dataloader_workers": workers,
        **gpu_memory(),
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    main()

"""The Hugging Face recipe's training, for bench_train.py: `Seq2SeqTrainer` on a dataset prepared by `map`.

    python bench/hf_train.py --model M --dataset D --output-dir O --timings T.json [options]
    torchrun --nproc_per_node 2 bench/hf_train.py …            # 2 ranks (DDP, gloo on CPU)

The dataset D is the output of the blog's `map` (input_features + labels, `save_to_disk`), made by bench_train.py
from the same clips the wdsbr run reads from its shards. Settings mirror `launch/train.py`'s: AdamW (torch's
implementation, betas 0.9/0.999, eps 1e-8, no weight decay), clipping 1.0, linear warm-up then linear decay to
--max-steps, the given precision, no evaluation and no checkpoint during training. Rank 0 writes the wall-clock
time at the end of every optimizer step to T.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import datasets
import torch
import transformers
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback, WhisperForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DataCollatorSpeechSeq2SeqWithPadding  # noqa: E402

from wdsbr.model import load_processor  # noqa: E402


class StepTimes(TrainerCallback):
    """time.time() at the end of every optimizer step, as launch/train.py's metrics rows measure it."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.time())


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
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore")

    processor = load_processor(args.model, language=args.language)
    model = WhisperForConditionalGeneration.from_pretrained(args.model)
    train_dataset = datasets.load_from_disk(args.dataset)
    collator = DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    training_args = Seq2SeqTrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        bf16=args.precision == "bf16",
        fp16=False,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=args.max_steps,
        report_to="none",
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=False,
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 else None,
    )
    timer = StepTimes()
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[timer],
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
                }
            )
        )
        if args.save_model:
            trainer.model.save_pretrained(args.save_model)
            processor.save_pretrained(args.save_model)


if __name__ == "__main__":
    main()

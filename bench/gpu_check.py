"""The GPU check: one short run that measures, side by side, what wdsbr does on one CUDA GPU.

    bash bench/gpu_check.sh --wheels wheels/           # on the GPU machine: installs what it lacks, then this
    python bench/gpu_check.py [--budget-seconds 480] [--results-dir bench/results] [--parts NAME,NAME]
    python bench/gpu_check.py --dry-run                # CPU, tiny sizes: every part end to end (about 2 min here)

Nothing is downloaded. Two randomly-initialised Whisper models are built with the real checkpoints' shapes
(`whisper-small`: d_model 768, 12+12 layers, 12 heads, ffn 3072, 80 mels, vocabulary 51865; `large-v3`: 1280,
32+32, 20, 5120, 128 mels, 51866), with the tokenizer `wdsbr.model.build_tiny_whisper` builds locally (its
ids sit at the bottom of the vocabulary; the ids above it are never labels and are never generated, since
`wdsbr.evaluation.no_timestamps` masks everything from the first timestamp on). Clips are
`bench/common.write_corpus`'s speech-like noise (20-30 s: full 30 s windows, the loader's worst case),
written to shards with the project's own writer; the loader wraps around them (`epoch_samples`).

Parts, in the order they run (PARTS below); each lives beside the bench it extends, whose docstring says what it
measures and how. Each writes its rows into one dict, a failure is recorded (error string) and the others still
run; a part that would start past the time budget is "skipped: time budget", and the JSON and Markdown are
rewritten after every part, so a run cut short still leaves what it measured:

  train_small_fp16, train_large_fp16,   bench/gpu_train.py      DeepSpeed ZeRO-2 fed by `make_train_loader`, the
  train_small_bf16, train_large_bf16                            micro-batch sized from two memory probes; the
                                                                model alone on a batch already on the GPU
  loader                                bench/gpu_loader.py     `make_train_loader` alone, against what the
                                                                small model trains on alone (target: ≥ 2×)
  generate_small, generate_large,       bench/gpu_generate.py   `validation_step`: greedy generate(), dynamic
  generate_small_compiled                                       and static cache, and transformers' compile
  log_mel                               bench/gpu_features.py   bench_features.py's candidates on 30 s clips
  hf_trainer_small, hf_trainer_large    bench/hf_train.py       `Seq2SeqTrainer` on the same model and clips
  fp16_vs_bf16_loss                     bench/gpu_train.py      fp16's loss curve against bf16's, same weights
  memory_table                          bench/gpu_memory.py     small, medium, turbo, large-v3: peak memory and
                                                                samples/s of full FT, offload and LoRA, with and
                                                                without checkpointing, largest micro-batch

What they share (sizes, the `Check` they fill, models, batches, the DeepSpeed engine, `setup`): bench/gpu_common.py.

Targets (judged only on CUDA): train small ≥ 190 samples/s, large-v3 ≥ 30, loader ≥ 2× the small trainer,
generate small ≥ 300 utterances/s. The dry run: tiny models (d_model 64, 2+2 layers), a handful of 1-1.5 s
clips and steps, CPU, bf16; the fp16 parts and the compiled generate say "skipped: needs CUDA".
Writes RESULTS_DIR/gpu_check.json and RESULTS_DIR/gpu_check.md; exit 1 when a part failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here: never wait for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (also puts the checkout on sys.path)
from common import free_port, print_table, save_results  # noqa: E402
from gpu_common import DRY_SIZES, GPU_SIZES, Check, environment, free_memory, setup  # noqa: E402
from gpu_features import log_mel  # noqa: E402
from gpu_generate import generate  # noqa: E402
from gpu_loader import loader_alone, loader_ratio  # noqa: E402
from gpu_memory import memory_table, table_lines  # noqa: E402
from gpu_train import LOSS_TOLERANCE, fp16_vs_bf16_loss, train_deepspeed  # noqa: E402
from hf_train import hf_trainer  # noqa: E402

import wdsbr  # noqa: E402  (the standard library only: wdsbr.REQUIRED)

# torch, transformers, deepspeed and wdsbr's modules are imported where used (the parts' modules import none of them
# at the top), after main() has checked that they are installed: on the GPU machine a missing carried wheel is one
# line naming the fix, not a traceback.

TARGETS = {
    "train small samples/s": 190.0,
    "train large-v3 samples/s": 30.0,
    "loader / trainer": 2.0,
    "generate small utterances/s": 300.0,
}


# Priority order: if the budget runs short, what is skipped is the least important.
# (name, function, arguments, needs CUDA)
PARTS = [
    ("train_small_fp16", train_deepspeed, {"name": "small", "precision": "fp16"}, True),
    ("loader", loader_alone, {}, False),
    ("generate_small", generate, {"name": "small", "variants": ("dynamic", "static")}, False),
    ("train_large_fp16", train_deepspeed, {"name": "large-v3", "precision": "fp16"}, True),
    ("train_small_bf16", train_deepspeed, {"name": "small", "precision": "bf16"}, False),
    ("train_large_bf16", train_deepspeed, {"name": "large-v3", "precision": "bf16"}, False),
    ("log_mel", log_mel, {}, False),
    ("hf_trainer_small", hf_trainer, {"name": "small"}, False),
    ("fp16_vs_bf16_loss", fp16_vs_bf16_loss, {}, True),
    ("hf_trainer_large", hf_trainer, {"name": "large-v3"}, False),
    ("generate_small_compiled", generate, {"name": "small", "variants": ("static+compile",)}, True),
    ("generate_large", generate, {"name": "large-v3", "variants": ("dynamic", "static")}, False),
    ("memory_table", memory_table, {}, False),
]


class BudgetExceeded(BaseException):
    """The global time budget ran out while a part was running (a BaseException: no `except Exception` on the way,
    in this script or a library, may swallow it)."""


# ------------------------------------------------------------------------------------------------- report


def judge(report: dict) -> list[dict]:
    """The issue's targets against what was measured; `pass` is None when not on CUDA (not judged)."""
    parts, on_gpu = report["parts"], report["environment"]["cuda"] is not None
    checks = []

    def add(what: str, part: str, value: float | None, target: float | None, passed: bool | None = None) -> None:
        if value is None and passed is None:
            return
        verdict = passed if passed is not None else value >= target
        checks.append(
            {"check": what, "part": part, "value": value, "target": target, "pass": verdict if on_gpu else None}
        )

    for part, rows in parts.items():
        if rows.get("status") != "ok" and not part.startswith("generate"):  # a generate part keeps its good variants
            continue
        if part.startswith("train_"):
            target = TARGETS["train small samples/s" if rows["model"] == "small" else "train large-v3 samples/s"]
            add(f"train {rows['model']} {rows['precision']} samples/s", part, rows["samples_per_s"], target)
        elif part == "loader":
            add("loader / trainer", part, rows["vs_trainer"], TARGETS["loader / trainer"])
        elif part.startswith("generate_small"):
            for variant, row in rows.get("variants", {}).items():
                if "error" not in row:
                    add(
                        f"generate small ({variant}) utterances/s",
                        part,
                        row["utterances_per_s"],
                        TARGETS["generate small utterances/s"],
                    )
        elif part == "fp16_vs_bf16_loss":
            add(
                "fp16 loss within noise of bf16 (max relative difference)",
                part,
                rows["max_relative_difference"],
                LOSS_TOLERANCE,
                rows["pass"],
            )
    return checks


def short(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary(name: str, rows: dict) -> str:
    """One line of what a part found, for the Markdown table."""
    if rows.get("status") != "ok" and not (name.startswith("generate") and rows.get("variants")):
        return rows.get("error", "").splitlines()[0][:160] if rows.get("error") else ""
    if name.startswith("train_"):
        return (
            f"{short(rows['samples_per_s'])} samples/s, {short(rows['audio_seconds_per_s'], 0)} audio s/s, batch "
            f"{rows['micro_batch']}, "
            f"data wait {100 * rows['data_wait_fraction']:.0f} %, peak {short(rows['peak_allocated_gb'])} GB, "
            f"overflow steps {rows['overflow_steps_measured']}, model alone {short(rows['model_only_samples_per_s'])} "
            f"(bare step {short(rows['bare_deepspeed_step_samples_per_s'])}), {rows['optimizer']}"
        )
    if name == "loader":
        return (
            f"{short(rows['samples_per_s'])} samples/s with {rows['workers']} workers, batch {rows['micro_batch']}; "
            f"{short(rows['vs_trainer'], 2)}× what the small model trains on alone"
        )
    if name.startswith("generate"):
        return "; ".join(
            f"{variant}: {short(row['utterances_per_s'])} utt/s (first batch {short(row['first_batch_s'])} s)"
            if "error" not in row
            else f"{variant}: {row['error'][:120]}"
            for variant, row in rows["variants"].items()
        )
    if name == "log_mel":
        return (
            "; ".join(f"{candidate} {short(row['median'])}" for candidate, row in rows["results"].items())
            + " windows/s"
        )
    if name.startswith("hf_trainer"):
        return (
            f"{short(rows['samples_per_s'])} samples/s, batch {rows['micro_batch']}, {rows['precision']}; "
            f"wdsbr {short(rows['wdsbr_vs_hf_trainer'], 2)}×"
        )
    if name == "memory_table":
        measured = [row for row in rows["rows"] if "samples_per_s" in row]
        return f"{len(measured)} of {len(rows['rows'])} configurations measured (the table below)"
    if name == "fp16_vs_bf16_loss":
        return (
            f"max relative difference {short(rows['max_relative_difference'], 4)} over {rows['compared_steps']} steps, "
            f"fp16 overflow steps {rows['fp16']['overflow_steps']}, losses fall: {rows['losses_fall']}, "
            f"scaling recovers: {rows['loss_scaling_recovers']}, pass: {rows['pass']}"
        )
    return ", ".join(f"{key} {short(value)}" for key, value in rows.items() if key not in ("status", "seconds"))


def markdown(report: dict) -> str:
    environment = report["environment"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print("# wdsbr GPU check\n")
        print(
            f"{environment['cuda'] or 'CPU only'}; torch {environment['torch']} (CUDA {environment['torch_cuda']}), "
            f"transformers {environment['transformers']}, deepspeed {environment['deepspeed']}; "
            f"{environment['cpu_cores']} CPU cores; {'dry run, ' if report['dry_run'] else ''}"
            f"{report['elapsed_s']:.0f} s of a {report['budget_seconds']:.0f} s budget"
            f"{'' if report['finished'] else ' (not finished)'}.\n"
        )
        print("## Targets\n")
        print_table(
            ["check", "measured", "target", "pass"],
            [
                [
                    c["check"],
                    short(c["value"], 2),
                    short(c["target"], 2),
                    {True: "yes", False: "**no**", None: "not judged (no GPU)"}[c["pass"]],
                ]
                for c in report["targets"]
            ],
            "lrrl",
        )
        print("\n## Parts\n")
        print_table(
            ["part", "status", "s", "result"],
            [
                [name, rows["status"], short(rows.get("seconds"), 0), summary(name, rows)]
                for name, rows in report["parts"].items()
            ],
            "llrl",
        )
        memory = report["parts"].get("memory_table", {})
        if memory.get("status") == "ok":
            print("\n## Memory: full fine-tuning, optimizer offload, LoRA (bf16, ZeRO-2, one device)\n")
            print("\n".join(table_lines(memory)))
    return out.getvalue()


def save(check: Check) -> None:
    """(Re)write the JSON (common.save_results, which adds the machine) and the Markdown."""
    report = check.report
    report["elapsed_s"] = time.perf_counter() - check.started
    loader = report["parts"].get("loader", {})
    if loader.get("status") == "ok" and loader["trainer_samples_per_s"] is None:  # the trainer ran after the loader
        loader.update(loader_ratio(check, loader["samples_per_s"]))
    report["targets"] = judge(report)
    save_results("gpu_check", report)
    (check.results_dir / "gpu_check.md").write_text(markdown(report), encoding="utf-8")


def run_part(check: Check, name: str, function: Callable, arguments: dict, needs_cuda: bool) -> dict:
    """One part: its rows, or why it did not run, or the error that stopped it; memory freed after it."""
    if needs_cuda and not check.cuda:
        return {"status": "skipped: needs CUDA"}
    if check.left() < check.sizes.need_seconds.get(name, 0):
        return {"status": "skipped: time budget"}
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, max(0.1, check.left()))  # the budget interrupts a part that overruns it
    try:
        rows = {"status": "ok", **function(check, **arguments)}
    except BudgetExceeded:
        rows = {"status": "skipped: time budget", "error": "the time budget ran out during this part"}
    except Exception as error:  # noqa: BLE001 - a failed part is recorded and the others still run
        rows = {
            "status": "error",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc()[-4000:],
        }
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        free_memory()
    rows["seconds"] = time.perf_counter() - started
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models and sizes: the whole check end to end")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="no part starts, and a running one stops, after this (default 480; dry run 600)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=common.RESULTS, help="where gpu_check.json and gpu_check.md go"
    )
    parser.add_argument(
        "--parts",
        default=None,
        help="comma-separated part names to run (default: all); the others are 'skipped: not selected'",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default: the CPU cores; dry run: at most 2)"
    )
    parser.add_argument(
        "--optimizer",
        choices=["auto", "fused", "torch"],
        default="auto",
        help="DeepSpeed's FusedAdam (JIT-compiled, needs a CUDA toolkit) or torch AdamW; auto: FusedAdam "
        "when a CUDA toolkit is found",
    )
    args = parser.parse_args()
    started = time.perf_counter()

    missing = [name for name in (*wdsbr.REQUIRED, "deepspeed", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: {sys.executable} has no {', '.join(missing)}: bash bench/gpu_check.sh --wheels DIR installs them "
            "(the script's header says how to make DIR)",
            file=sys.stderr,
        )
        return 2
    import torch
    import transformers
    from torch.utils import cpp_extension

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA device (torch.cuda.is_available() is False): run with --dry-run on a CPU", file=sys.stderr
        )
        return 2
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = args.workers or (min(2, cores) if args.dry_run else cores)
    # one rank of a one-GPU job, as the deepspeed launcher would set it
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(0)
    fused = torch.cuda.is_available() and cpp_extension.CUDA_HOME  # FusedAdam is JIT-compiled: it needs a toolkit
    adam = args.optimizer if args.optimizer != "auto" else "fused" if fused else "torch"
    budget = args.budget_seconds or sizes.budget_seconds
    args.results_dir.mkdir(parents=True, exist_ok=True)
    common.RESULTS = args.results_dir  # save_results writes RESULTS/NAME.json

    def out_of_time(signum, frame):
        raise BudgetExceeded()

    signal.signal(signal.SIGALRM, out_of_time)
    selected = set(args.parts.split(",")) if args.parts else None
    unknown = (selected or set()) - {name for name, *_ in PARTS}
    if unknown:
        parser.error(
            f"--parts: unknown {', '.join(sorted(unknown))}; the parts are {', '.join(name for name, *_ in PARTS)}"
        )

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        report = {
            "dry_run": args.dry_run,
            "budget_seconds": budget,
            "finished": False,
            "optimizer": {"choice": adam, "cuda_toolkit": cpp_extension.CUDA_HOME},
            "parts": {},
        }
        check = Check(
            sizes=sizes,
            tmp=Path(tmp),
            results_dir=args.results_dir,
            device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
            workers=workers,
            started=started,
            deadline=started + budget,
            adam=adam,
            report=report,
        )
        report["environment"] = environment(check)
        if adam == "torch" and torch.cuda.is_available() and args.optimizer == "auto":
            report["optimizer"]["note"] = (
                "no CUDA toolkit (CUDA_HOME/nvcc) found: DeepSpeed's FusedAdam cannot be JIT-compiled here"
            )
        report["sizes"] = {key: value for key, value in vars(sizes).items() if key != "need_seconds"}
        report["setup"] = run_part(check, "setup", setup, {}, False)
        print(f"[{time.perf_counter() - started:5.0f} s] setup: {report['setup']['status']}", flush=True)
        for name, function, arguments, needs_cuda in PARTS:
            if report["setup"]["status"] != "ok":
                rows = {"status": "skipped: setup failed"}
            elif selected is not None and name not in selected:
                rows = {"status": "skipped: not selected"}
            else:
                rows = run_part(check, name, function, arguments, needs_cuda)
            report["parts"][name] = rows
            print(
                f"[{time.perf_counter() - started:5.0f} s] {name}: {rows['status']} {summary(name, rows)}", flush=True
            )
            save(check)
        report["finished"] = True
        save(check)
    failed = [name for name, rows in {"setup": report["setup"], **report["parts"]}.items() if rows["status"] == "error"]
    print(
        f"wrote {args.results_dir / 'gpu_check.json'} and {args.results_dir / 'gpu_check.md'} in "
        f"{time.perf_counter() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed or report["setup"]["status"] != "ok" else 0


if __name__ == "__main__":
    sys.exit(main())

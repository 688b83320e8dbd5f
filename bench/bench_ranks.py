"""Where the time of a data-parallel step goes on this machine: one rank × 16 vs two ranks × 8 of a real Whisper.

    python bench/bench_ranks.py --model ~/.cache/wdsbr/tiny.en [--repeats 3]

Measured side by side, the model in bf16 as DeepSpeed's engine holds it, 30 s windows, 16-token labels:
  compute     forward + backward of one micro-batch: 16 clips on all cores (1 rank), 8 clips on cores / 2 threads
              (what each of 2 ranks runs at the same time), and the two ranks' 8 clips run together in two
              processes (the real contention: shared memory bandwidth and caches)
  collectives gloo between 2 processes (1 thread each, as the ranks): all_reduce of every gradient (the model's
              parameter count, bf16 and fp32), all_gather of the updated bf16 parameters (ZeRO-2's step)
  optimizer   AdamW over all fp32 master parameters (1 rank) and over half of them (ZeRO-2: each rank its partition)
  worker      a DataLoader worker's start-up: forkserver process, imports, first batch (once per epoch)
Then the 2-rank step predicted from those parts beside the 1-rank one. Writes bench/results/ranks.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_results  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def batch(model, size: int) -> dict:
    generator = torch.Generator().manual_seed(size)
    features = torch.randn(size, model.config.num_mel_bins, 3000, generator=generator).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (size, 16), generator=generator)
    return {"input_features": features, "labels": labels}


def time_step(model, inputs: dict, repeats: int) -> float:
    """Median seconds of forward + backward (one warm-up first)."""
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        model(**inputs).loss.backward()
        if index:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def load(path: str):
    from wdsbr.model import load_model

    model = load_model(path).to(torch.bfloat16)
    model.train()
    return model


def rank_main(rank: int, path: str, repeats: int, port: int, results) -> None:
    """One of 2 ranks: compute on 8 clips at once with the other rank, then the collectives."""
    import torch.distributed as dist

    torch.set_num_threads(max(1, CORES // 2))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = load(path)
    inputs = batch(model, 8)
    dist.barrier()
    compute = time_step(model, inputs, repeats)
    parameters = sum(p.numel() for p in model.parameters())
    out = {"compute_together": compute}
    for dtype in (torch.bfloat16, torch.float32):
        flat = torch.ones(parameters, dtype=dtype)
        times = []
        for index in range(repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(flat)
            if index:
                times.append(time.perf_counter() - start)
        out[f"all_reduce_{str(dtype).split('.')[-1]}"] = statistics.median(times)
    half = torch.ones((parameters + 1) // 2, dtype=torch.bfloat16)
    gathered = [torch.empty_like(half) for _ in range(2)]
    times = []
    for index in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        dist.all_gather(gathered, half)
        if index:
            times.append(time.perf_counter() - start)
    out["all_gather_bf16"] = statistics.median(times)
    results[rank] = out
    dist.barrier()
    dist.destroy_process_group()


def optimizer_seconds(parameters: int, share: float, repeats: int) -> float:
    weights = torch.nn.Parameter(torch.zeros(int(parameters * share)))
    weights.grad = torch.ones_like(weights)
    optimizer = torch.optim.AdamW([weights], lr=1e-5, foreach=True)
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        optimizer.step()
        if index:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker_start_seconds(shards: str, path: str) -> float:
    from wdsbr.data import LoaderOptions, make_train_loader
    from wdsbr.model import load_processor

    processor = load_processor(path, "en")
    loader = make_train_loader(
        shards,
        LoaderOptions(
            tokenizer=processor.tokenizer,
            prompt_ids=list(processor.tokenizer.prefix_tokens),
            n_mels=80,
            micro_batch_size=8,
            num_workers=1,
            seed=0,
        ),
        epoch=0,
    )
    start = time.perf_counter()
    next(iter(loader))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "wdsbr" / "tiny.en"))
    parser.add_argument(
        "--shards", default=str(Path.home() / ".cache" / "wdsbr" / "bench-accuracy" / "shards-train" / "train")
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=29650)
    args = parser.parse_args()
    started = time.perf_counter()

    torch.set_num_threads(CORES)
    model = load(args.model)
    parameters = sum(p.numel() for p in model.parameters())
    one_rank = time_step(model, batch(model, 16), args.repeats)
    torch.set_num_threads(max(1, CORES // 2))
    alone = time_step(model, batch(model, 8), args.repeats)  # one rank's share, on its half of the cores, alone
    del model
    torch.set_num_threads(CORES)
    results = mp.Manager().dict()
    mp.spawn(rank_main, args=(args.model, args.repeats, args.port, results), nprocs=2, join=True)
    ranks = [results[0], results[1]]
    parts = {key: max(r[key] for r in ranks) for key in ranks[0]}  # a collective ends when the slower rank is done
    adam_all, adam_half = (optimizer_seconds(parameters, share, args.repeats) for share in (1.0, 0.5))
    worker = worker_start_seconds(args.shards, args.model) if Path(args.shards).exists() else None

    one = one_rank + adam_all
    two = parts["compute_together"] + parts["all_reduce_bfloat16"] + parts["all_gather_bf16"] + adam_half
    report = {
        "model": args.model,
        "parameters": parameters,
        "cores": CORES,
        "repeats": args.repeats,
        "compute_1rank_16_seconds": one_rank,
        "compute_8_alone_seconds": alone,
        **{f"{k}_seconds": v for k, v in parts.items()},
        "adamw_all_seconds": adam_all,
        "adamw_half_seconds": adam_half,
        "worker_start_seconds": worker,
        "step_1rank_seconds": one,
        "step_2ranks_predicted_seconds": two,
        "bench_seconds": time.perf_counter() - started,
    }
    out = save_results("ranks", report)
    print(f"\n{Path(args.model).name}: {parameters / 1e6:.1f} M parameters, {CORES} cores, median of {args.repeats}\n")
    print_table(
        ["part", "1 rank × 16", "2 ranks × 8"],
        [
            [
                "forward + backward",
                f"{one_rank:.2f} s ({CORES} threads)",
                f"{parts['compute_together']:.2f} s (both at once, {max(1, CORES // 2)} thread each; {alone:.2f} s "
                "alone)",
            ],
            [
                "gradient all_reduce (bf16; fp32)",
                "",
                f"{parts['all_reduce_bfloat16']:.2f} s; {parts['all_reduce_float32']:.2f} s",
            ],
            ["parameter all_gather (bf16)", "", f"{parts['all_gather_bf16']:.2f} s"],
            ["AdamW step", f"{adam_all:.2f} s", f"{adam_half:.2f} s (half the parameters)"],
            ["step", f"{one:.2f} s", f"{two:.2f} s predicted ({two / one:.2f}×)"],
            [
                "DataLoader worker start-up, per epoch",
                f"{worker:.2f} s" if worker else "",
                f"{worker:.2f} s" if worker else "",
            ],
        ],
        align="lll",
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

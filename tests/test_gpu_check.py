"""bench/gpu_check.py: the GPU check runs end to end on a CPU (`--dry-run`: tiny models, real DeepSpeed,
WebDataset and transformers) and writes every part; and the two pieces of arithmetic only a GPU run reaches
(bench/gpu_train.py: sizing the micro-batch from two memory probes, comparing fp16's loss curve with bf16's) do
what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402
import gpu_train  # noqa: E402

CUDA_ONLY = {"train_small_fp16", "train_large_fp16", "fp16_vs_bf16_loss", "generate_small_compiled"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    """One dry run into a temporary results folder (the budget raised so a slow machine cannot skip parts)."""
    results = tmp_path_factory.mktemp("gpu-check")
    command = [
        sys.executable,
        str(ROOT / "bench" / "gpu_check.py"),
        "--dry-run",
        "--results-dir",
        str(results),
        "--budget-seconds",
        "3600",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}  # a CPU run even on a GPU machine
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads((results / "gpu_check.json").read_text()), results


def test_the_dry_run_runs_every_part_without_an_error(dry_run):
    report, _ = dry_run
    assert report["dry_run"] is True and report["finished"] is True
    assert report["setup"]["status"] == "ok"
    assert list(report["parts"]) == [name for name, *_ in gpu_check.PARTS]
    statuses = {name: rows["status"] for name, rows in report["parts"].items()}
    assert {name for name, status in statuses.items() if status == "error"} == set(), {
        name: rows.get("error") for name, rows in report["parts"].items()
    }
    assert {name for name, status in statuses.items() if status == "skipped: needs CUDA"} == CUDA_ONLY
    assert {name for name, status in statuses.items() if status == "ok"} == set(statuses) - CUDA_ONLY


def test_the_dry_run_measures_training_loader_features_and_generation(dry_run):
    parts = dry_run[0]["parts"]
    for name in ("train_small_bf16", "train_large_bf16"):  # DeepSpeed ZeRO-2 in bf16, fed by make_train_loader
        rows = parts[name]
        assert rows["zero_stage"] == 2 and rows["precision"] == "bf16"
        assert rows["samples_per_s"] > 0 and rows["audio_seconds_per_s"] > 0 and rows["model_only_samples_per_s"] > 0
        assert rows["measured_steps"] >= 1 and 0 <= rows["data_wait_fraction"] < 1
    assert parts["train_large_bf16"]["parameters_millions"] > 0
    for name in ("hf_trainer_small", "hf_trainer_large"):  # Seq2SeqTrainer on the same model shape and clips
        assert parts[name]["samples_per_s"] > 0 and parts[name]["wdsbr_vs_hf_trainer"] > 0
    loader = parts["loader"]
    assert loader["samples_per_s"] > 0 and loader["vs_trainer"] > 0  # against train_small_bf16, measured after it
    features = parts["log_mel"]["results"]
    assert {"wdsbr", "wdsbr-1-thread", "hf-numpy", "hf-torch"} <= set(features)
    assert all(row["median"] > 0 and row["max_abs_diff_vs_hf_numpy"] < 1e-3 for row in features.values())
    for name in ("generate_small", "generate_large"):
        variants = parts[name]["variants"]
        assert set(variants) == {"dynamic", "static"}
        assert all(row["utterances_per_s"] > 0 for row in variants.values())


def test_targets_are_listed_but_not_judged_without_a_gpu_and_the_markdown_has_them(dry_run):
    report, results = dry_run
    checks = {row["check"] for row in report["targets"]}
    assert {
        "train small bf16 samples/s",
        "train large-v3 bf16 samples/s",
        "loader / trainer",
        "generate small (dynamic) utterances/s",
    } <= checks
    assert all(row["pass"] is None for row in report["targets"])
    assert report["environment"]["cuda"] is None and report["environment"]["deepspeed"]
    markdown = (results / "gpu_check.md").read_text()
    assert markdown.startswith("# wdsbr GPU check")
    assert "| train_small_fp16 | skipped: needs CUDA |" in markdown
    assert "| train small bf16 samples/s |" in markdown


def test_the_micro_batch_is_the_largest_multiple_of_8_under_the_memory_fraction():
    gb = 1e9
    # 10 GB fixed + 1 GB a sample: 85 % of 100 GB leaves room for 75 samples -> 72
    assert gpu_train.micro_batch_for({4: 14 * gb, 8: 18 * gb}, 100 * gb, 0, cap=256) == 72
    assert (
        gpu_train.micro_batch_for({4: 14 * gb, 8: 18 * gb}, 100 * gb, 12 * gb, cap=256) == 56
    )  # optimizer state to come
    assert gpu_train.micro_batch_for({4: 14 * gb, 8: 18 * gb}, 100 * gb, 0, cap=64) == 64
    assert (
        gpu_train.micro_batch_for({4: 14 * gb, 8: 18 * gb}, 20 * gb, 0, cap=256) == 4
    )  # never below the probe that ran
    assert gpu_train.micro_batch_for({4: 14 * gb, 8: 14 * gb}, 100 * gb, 0, cap=128) == 128  # memory does not grow


def test_fp16_losses_are_compared_with_bf16_at_equal_applied_updates():
    # fp16 skipped its first two steps (overflow): its steps 0-2 all ran the initial weights
    fp16 = [(0, 10.0), (0, 10.0), (0, 10.0), (1, 9.1), (2, 8.0)]
    bf16 = [(0, 10.0), (1, 9.0), (2, 8.2), (3, 7.5), (4, 7.0)]
    compared = gpu_train.compare_losses(fp16, bf16)
    assert compared["compared_steps"] == 5
    assert compared["max_relative_difference"] == pytest.approx(0.2 / 8.2)
    assert gpu_train.compare_losses([], bf16)["max_relative_difference"] is None

"""Running the tools as a newcomer does: a plain `python` without the set-up gets one line naming the fix, the
console scripts (`wdsbr-shard`, `wdsbr-train`, `wdsbr-evaluate`) run the documented scripts from any folder,
and `--help` lists options under topic headings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = [
    "tools/shard_corpus.py",
    "tools/peek_batch.py",
    "tools/make_tiny_whisper.py",
    "launch/train.py",
    "launch/evaluate.py",
    "tools/fetch_pretrained.py",
    "tools/compare_evaluations.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_python_without_the_dependencies_says_what_to_do_in_one_line(script, tmp_path):
    # -S: no site-packages, so neither the dependencies nor the editable install are there (as a bare python)
    result = subprocess.run(
        [sys.executable, "-S", str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {sys.executable} has no torch, "), lines
    assert "make setup" in lines[0] and ".venv/bin/python" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command, usage",
    [("wdsbr-shard", "shard_corpus.py"), ("wdsbr-train", "train.py"), ("wdsbr-evaluate", "evaluate.py")],
)
def test_console_scripts_run_the_documented_tools_from_any_folder(command, usage, tmp_path):
    result = subprocess.run([str(BIN / command), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {usage} [OPTIONS]")


def test_wdsbr_shard_shards_the_sample_corpus_from_elsewhere(tmp_path):
    result = subprocess.run(
        [str(BIN / "wdsbr-shard"), str(ROOT / "sample" / "corpus"), "shards", "--workers", "1", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 42 and "kept 42 of 42 inputs" in result.stdout


def test_train_help_groups_its_options_by_topic():
    result = subprocess.run(
        [sys.executable, "launch/train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    headings = [line.rstrip(":") for line in result.stdout.splitlines() if line and not line.startswith(" ")][1:]
    assert headings == [
        "Data",
        "Augmentation (training only)",
        "Model",
        "Optimisation",
        "LoRA (one small GPU: train adapters, not the model)",
        "Validation and early stopping",
        "Decoding and scoring",
        "Checkpoints, resume and export",
        "Logging",
        "Runtime",
    ]  # no "Other"
    assert "--lr FLOAT" in result.stdout.split("Optimisation:")[1].split("Validation")[0]


def test_evaluate_help_shares_the_trainers_groups():
    result = subprocess.run(
        [sys.executable, "launch/evaluate.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    headings = [line.rstrip(":") for line in result.stdout.splitlines() if line and not line.startswith(" ")][1:]
    assert headings == [
        "Model",
        "Data and output",
        "Engine",
        "Decoding and scoring",
        "Language model",
        "Long recordings",
        "Runtime",
    ]
    decoding = result.stdout.split("Decoding and scoring:")[1].split("Long recordings")[0]
    assert all(option in decoding for option in ("--text-normalizer", "--num-beams", "--generation-max-length"))


_IMPORTED = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    code = done.code
heavy = sorted(name for name in ("torch", "transformers", "deepspeed", "webdataset") if name in sys.modules)
print("imported:", ",".join(heavy), "exit:", code)
"""


@pytest.mark.parametrize("script", ["launch/train.py", "launch/evaluate.py"])
@pytest.mark.parametrize("args", [["--help"], ["--no-such-option"], ["--num-beams", "many"]])
def test_help_and_a_mistyped_option_answer_before_torch_is_imported(script, args):
    """What makes `--help` answer at once (0.1 s here, against 5-10 s with torch and deepspeed loaded)."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTED, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines()[-1] == f"imported:  exit: {0 if args == ['--help'] else 2}", result.stderr

"""launch/evaluate.py as a user runs it (python and the deepspeed launcher, 2 CPU ranks): one JSON line of scores,
the per-sample TSV and Markdown report, a plain folder scored like its shards, the trainer's WER, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import free_port, json_line, read_metrics, run_evaluate, serve_folder, speech_like

from wdsbr.corpus import open_corpus
from wdsbr.engine import cpu_precision_for_fp16
from wdsbr.shards import ShardOptions, shard_corpus
from wdsbr.text import clean_text

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "evaluate.py"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
WORDS = ["demat", "kenavo", "trugarez", "c'hoant", "bara", "mor", "ti", "gêr", "brezhoneg", "skol", "bihan", "bras"]
FAST = ["--precision", "fp32", "--generation-max-length", "6", "--batch-size", "3", "--num-workers", "0"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model(wordy_whisper) -> str:
    """A tiny random Whisper whose predictions are words that differ between clips (see conftest)."""
    return wordy_whisper


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """10 ID.wav + ID.txt pairs with 1-5 word transcripts (so WERs differ), and one .txt without audio."""
    folder = tmp_path_factory.mktemp("corpus") / "corpus"
    for i in range(10):
        speaker = folder / f"spk{i % 2}"
        speaker.mkdir(parents=True, exist_ok=True)
        sf.write(speaker / f"utt{i:02d}.wav", speech_like(0.5 + (i % 3) * 0.5, seed=i), 16_000)
        words = [WORDS[(i * 5 + j) % len(WORDS)] for j in range(1 + i % 5)]
        (speaker / f"utt{i:02d}.txt").write_text(
            " ".join(words).capitalize() + ("!" if i % 2 else ""), encoding="utf-8"
        )
    (folder / "orphan.txt").write_text("no audio beside me", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> Path:
    """The corpus through the project's writer: 10 samples in 4 shards (3, 3, 3, 1)."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    shard_corpus(
        open_corpus(corpus),
        out,
        ShardOptions(val_fraction=0, test_fraction=0, samples_per_shard=3, workers=1),
        progress=False,
    )
    return out / "train"


evaluate = run_evaluate


@pytest.fixture(scope="module")
def single(model, shards, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """One process on the shards, fp32, with --output: (process, its JSON, the TSV)."""
    tsv = tmp_path_factory.mktemp("out") / "report" / "preds.tsv"
    result = evaluate("--model", model, "--data", shards, "--output", tsv, *FAST)
    return result, json_line(result), tsv


def word_edits(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def cli():
    """launch/evaluate.py's click command, imported from its path (launch/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("evaluate_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def read_tsv(path: Path) -> list[dict]:
    header, *rows = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    return [dict(zip(header.split("\t"), row.split("\t"))) for row in rows]


# ------------------------------------------------------------------------------------------------ the scores


def test_prints_one_json_line_of_scores_after_a_progress_bar(single, model, shards):
    result, scores, _ = single
    assert result.stdout.count("\n") == 1  # nothing else on stdout
    assert "evaluate" in result.stderr and "Traceback" not in result.stderr
    manifest = json.loads((shards.parent / "manifest.json").read_text())
    assert scores["samples"] == manifest["splits"]["train"]["samples"] == 10
    assert scores["audio_hours"] == pytest.approx(manifest["splits"]["train"]["seconds"] / 3600, abs=1e-6)
    assert scores["rtf"] == pytest.approx(scores["seconds"] / (scores["audio_hours"] * 3600), rel=1e-2)
    assert 0 < scores["wer"] and 0 < scores["cer"] and scores["loss"] > 0
    assert {
        k: scores[k]
        for k in (
            "model",
            "data",
            "normalizer",
            "language",
            "precision",
            "world_size",
            "skipped_samples",
            "rejected_inputs",
        )
    } == {
        "model": model,
        "data": str(shards),
        "normalizer": "default",
        "language": "br",
        "precision": "fp32",
        "world_size": 1,
        "skipped_samples": 0,
        "rejected_inputs": 0,
    }


def test_two_ranks_under_the_deepspeed_launcher_reading_over_http_give_the_same_numbers(
    single, model, shards, tmp_path
):
    tsv = tmp_path / "two-ranks.tsv"
    with serve_folder(shards.parent) as url:  # a real HTTP server; counts from its manifest.json
        result = evaluate(
            "--model",
            model,
            "--data",
            f"{url}/train/shard-{{000000..000003}}.tar",
            "--output",
            tsv,
            *FAST,
            launcher=[str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port())],
        )
    two_ranks = json_line(result)
    one_rank = single[1]
    # sample by sample: the same predictions, and they are words that differ between clips (not all empty)
    per_sample = {row["key"]: row["raw_prediction"] for row in read_tsv(single[2])}
    assert {row["key"]: row["raw_prediction"] for row in read_tsv(tsv)} == per_sample
    assert len(set(per_sample.values())) > 1 and sum(map(bool, per_sample.values())) > len(per_sample) // 2
    assert two_ranks["world_size"] == 2
    for name in ("wer", "cer", "samples", "audio_hours", "skipped_samples"):
        assert two_ranks[name] == one_rank[name], name
    assert two_ranks["loss"] == pytest.approx(one_rank["loss"], rel=1e-5)  # summed over tokens in another order


def test_the_tsv_has_each_samples_wer_worst_first_and_a_markdown_report_beside_it(single):
    _, scores, tsv = single
    rows = read_tsv(tsv)
    assert list(rows[0]) == [
        "key",
        "reference",
        "prediction",
        "wer",
        "errors",
        "reference_words",
        "raw_reference",
        "raw_prediction",
    ]
    assert len(rows) == 10
    total_edits = total_words = 0
    for row in rows:
        assert row["reference"] == clean_text(row["raw_reference"])  # what was scored: the normalised text
        assert row["prediction"] == clean_text(row["raw_prediction"])
        reference, prediction = row["reference"].split(), row["prediction"].split()
        edits = word_edits(reference, prediction)
        assert float(row["wer"]) == pytest.approx(edits / len(reference), abs=1e-6), row
        assert (int(row["errors"]), int(row["reference_words"])) == (edits, len(reference))
        total_edits, total_words = total_edits + edits, total_words + len(reference)
    assert scores["wer"] == pytest.approx(total_edits / total_words)  # per-sample errors add up to the corpus WER
    wers = [float(row["wer"]) for row in rows]
    assert wers == sorted(wers, reverse=True) and wers[0] > wers[-1]

    report = tsv.with_suffix(".md").read_text(encoding="utf-8")
    worst_section = report.split("## The 10 worst samples")[1].split("## Most frequent word substitutions")[0]
    keys_in_order = [line.split("|")[1].strip() for line in worst_section.splitlines() if line.startswith("| spk")]
    assert keys_in_order == [row["key"] for row in rows]
    assert f"{scores['wer']:.4f}" in report
    substitutions = report.split("## Most frequent word substitutions")[1].split("##")[0]
    pairs = [line.split("|")[2:4] for line in substitutions.splitlines() if line[:3].strip("| ").isdigit()]
    assert pairs and all(len(word.split()) == 1 for pair in pairs for word in pair)  # word for word, not phrases


def test_a_folder_of_wav_and_txt_pairs_scores_like_the_shards_written_from_it(single, model, corpus):
    result = evaluate("--model", model, "--data", corpus, *FAST)
    from_folder, from_shards = json_line(result), single[1]
    for name in ("wer", "cer", "samples", "audio_hours", "loss"):
        assert from_folder[name] == from_shards[name], name
    assert from_folder["rejected_inputs"] == 1  # orphan.txt, reported, not silently dropped
    assert f"rejected 1 input of {corpus}: missing_audio 1 (first: orphan.txt" in result.stderr


def test_evaluating_a_runs_best_reproduces_the_wer_the_trainer_logged(model, shards, tmp_path):
    """Train (2 ranks, the CPU default: bf16, or fp32 without native bf16), read best/'s eval row from
    metrics.jsonl, then run the CLI on the same shards with nothing but --model RUN --data (and the run's worker
    count): the rest comes from the run's config.json. The model writes words, so an equal WER is not 1.0 = 1.0."""
    out = tmp_path / "run"
    command = [
        str(DEEPSPEED),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "launch/train.py",
        "--deepspeed",
        "configs/ds_zero2.json",
        "--model",
        model,
        "--train-shards",
        str(shards),
        "--val-shards",
        str(shards),
        "--output-dir",
        str(out),
        "--batch-size",
        "3",
        "--num-workers",
        "1",
        "--lr",
        "1e-4",
        "--warmup-steps",
        "1",
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        "--generation-max-length",
        "6",
    ]
    trained = subprocess.run(
        command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    (row,) = [r for r in read_metrics(out) if r["kind"] == "eval"]
    assert row["is_best"] and row["samples"] == 10 and row["cer"] not in (0.0, 1.0)
    result = evaluate(
        "--model",
        out,
        "--data",
        shards,
        "--num-workers",
        "1",
        launcher=[str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port())],
    )
    cli = json_line(result)
    precision = cpu_precision_for_fp16()  # what the trainer made of the config's fp16 here
    assert f"--generation-max-length 6, --batch-size 3, --precision {precision}" in result.stderr
    assert (cli["wer"], cli["cer"], cli["samples"], cli["precision"]) == (
        row["wer"],
        row["cer"],
        row["samples"],
        precision,
    )
    assert {name: cli[name] for name in ("wer_raw", "wer_normalized", "wer_whisper_basic")} == {
        name: row[name] for name in ("wer_raw", "wer_normalized", "wer_whisper_basic")
    }
    assert cli["loss"] == pytest.approx(row["val_loss"], rel=1e-4)  # the same tokens, summed in another order


def test_max_samples_and_fp16_falling_back_on_cpu_like_the_trainer(model, shards):
    result = CliRunner().invoke(
        cli(),
        [
            "--model",
            model,
            "--data",
            str(shards),
            "--max-samples",
            "4",
            "--generation-max-length",
            "4",
            "--num-workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    precision = cpu_precision_for_fp16()  # bf16, or fp32 on a CPU without native bf16
    assert scores["samples"] == 4 and scores["precision"] == precision
    assert result.stderr.count(f"fp16 is not supported on CPU: evaluating in {precision}") == 1


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"--data": "no/such/shards"}, ["--data no/such/shards: no such file or folder"]),
        ({"--model": "runs/no-such-run/best"}, ["--model runs/no-such-run/best: no such model folder"]),
        ({"--model": "TOKENIZERLESS"}, ["incomplete model folder, no tokenizer"]),
        ({"--language": "klingon"}, ["--language: unknown language 'klingon'"]),
        ({"--batch-size": "-4"}, ["--batch-size -4: must be at least 1"]),
        ({"--language": "xx", "--batch-size": "0"}, ["--batch-size 0", "unknown language 'xx'"]),  # all at once
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(model, shards, tmp_path, change, fragments):
    if change.get("--model") == "TOKENIZERLESS":
        without = tmp_path / "no-tokenizer"
        without.mkdir()
        for name in ("config.json", "generation_config.json", "model.safetensors"):
            (without / name).write_bytes((Path(model) / name).read_bytes())
        change = {"--model": str(without)}
    options = {"--model": model, "--data": str(shards), **change}
    result = CliRunner().invoke(cli(), [part for item in options.items() for part in item])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert result.stdout == ""


def test_the_script_reports_every_problem_in_one_line_and_exits_2(tmp_path):
    result = evaluate("--model", tmp_path / "no-such-run" / "best", "--data", tmp_path / "no-such-shards")
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "no-such-shards: no such file or folder" in lines[0] and "no-such-run/best: no such model folder" in lines[0]


# ------------------------------------------------------------------------------------ a run's own settings


def test_a_run_folder_lends_its_settings_to_the_options_not_given(model, shards, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(model, run / "best")
    options = {
        "language": "br",
        "text_normalizer": "default",
        "num_beams": 1,
        "generation_max_length": 5,
        "eval_batch_size": None,
        "batch_size": 2,
        "precision": "fp32",
        "lr": 1e-3,
    }
    (run / "config.json").write_text(json.dumps({"options": options}))
    result = CliRunner().invoke(
        cli(), ["--model", str(run), "--data", str(shards), "--num-workers", "0", "--batch-size", "5"]
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["model"] == str(run / "best")  # the run folder means its best/
    assert (scores["precision"], scores["batch_size"]) == ("fp32", 5)  # taken from the run; given on the command line
    assert f"from {run / 'config.json'}: --generation-max-length 5, --precision fp32" in result.stderr

    plain = CliRunner().invoke(cli(), ["--model", model, "--data", str(shards), "--num-workers", "0", *FAST])
    assert plain.exit_code == 0 and "config.json:" not in plain.stderr  # a bare model folder lends nothing

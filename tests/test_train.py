"""launch/train.py end to end: the real `deepspeed` launcher, 2 ranks on CPU (gloo), a tiny Whisper, shards from
our own writer. Few runs, each asserting exact artefacts: metrics rows, checkpoint tags, best/ files.

Configuration errors are checked in-process (they happen before any process group exists).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import free_port, read_metrics, serve_folder, speech_like, write_speech_corpus
from safetensors.torch import load_file

from wdsbr.corpus import open_corpus
from wdsbr.engine import cpu_precision_for_fp16
from wdsbr.lm import estimate
from wdsbr.shards import ShardOptions, shard_corpus

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
TRAIN_ROW = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "loss_scale",
    "step_seconds",
    "samples_per_s",
    "audio_seconds_per_s",
    "skipped_samples",
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """24 training and 8 validation samples, 4 shards each (so 2 ranks × 1 worker split them evenly)."""
    root = tmp_path_factory.mktemp("train-data")
    for split, n, seed in (("train", 24, 0), ("validation", 8, 100)):
        write_speech_corpus(root / "corpus" / split, n, seed=seed)
    shard_corpus(
        open_corpus(root / "corpus"), root / "shards", ShardOptions(samples_per_shard=6, workers=1), progress=False
    )
    return root / "shards"


def launch(output: Path, *args: str, ranks: int = 2) -> subprocess.CompletedProcess:
    port = free_port()
    command = [
        DEEPSPEED,
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(port),
        "launch/train.py",
        "--deepspeed",
        "configs/ds_zero2.json",
        "--output-dir",
        str(output),
        *args,
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # DeepSpeed's CPU all-reduce leaves a 66 MB /dev/shm file per rank; the trainer removes them (engine.shm_buffer)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    return result


def run_training(
    shards: Path, model: str, output: Path, *args: str, ranks: int = 2, data: tuple[str, ...] | None = None
) -> subprocess.CompletedProcess:
    data = data or ("--train-shards", str(shards / "train"), "--val-shards", str(shards / "validation"))
    return launch(
        output,
        "--model",
        model,
        *data,
        "--batch-size",
        "3",
        "--num-workers",
        "1",
        "--shuffle-buffer",
        "8",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--log-every",
        "2",
        "--generation-max-length",
        "8",
        *args,
        ranks=ranks,
    )


def rows(output: Path, kind: str) -> list[dict]:
    return [row for row in read_metrics(output) if row["kind"] == kind]


def test_two_ranks_train_stop_early_together_and_save_a_loadable_best(shards, full_whisper, tmp_path):
    # --metric loss with a huge --min-delta: only the first evaluation can be "better", so with patience 2 the
    # run must stop at the third evaluation (step 6) on both ranks, whatever the random model predicts.
    # --grad-accum 2: a step is two micro-batches of 3 on each of 2 ranks; --pack: each holds several utterances.
    # --export ct2,ggml: rank 0 converts best/ at the end, for faster-whisper and for whisper.cpp (a model with the
    # real vocabulary layout, as whisper.cpp needs), and scores each conversion on the validation shards.
    # --val-long-form: three long recordings (one per rank and one more) scored whole at every evaluation.
    out, recordings = tmp_path / "run", tmp_path / "recordings"
    recordings.mkdir()
    for i, seconds in enumerate([35.0, 4.0, 31.0]):
        sf.write(recordings / f"rec{i}.wav", speech_like(seconds, seed=i), 16_000)
        (recordings / f"rec{i}.txt").write_text(f"demat {i}", encoding="utf-8")
    sf.write(recordings / "untranscribed.wav", speech_like(1.0), 16_000)
    result = run_training(
        shards,
        full_whisper,
        out,
        "--max-steps",
        "40",
        "--eval-every",
        "2",
        "--metric",
        "loss",
        "--min-delta",
        "100",
        "--patience",
        "2",
        "--grad-accum",
        "2",
        "--pack",
        "--export",
        "ct2,ggml",
        "--val-long-form",
        str(recordings),
    )
    precision = cpu_precision_for_fp16()  # the config's fp16 on CPU: bf16, or fp32 without native bf16
    assert f"fp16 is not supported on CPU: training in {precision} instead" in result.stdout
    assert [(r["step"], r["is_best"]) for r in rows(out, "eval")] == [(2, True), (4, False), (6, False)]
    assert all(r["long_recordings"] == 3 and r["long_wer"] >= 0 for r in rows(out, "eval"))
    assert "untranscribed.wav: missing_transcript" in result.stdout  # named, left out
    summary = rows(out, "summary")[-1]
    assert (summary["step"], summary["stopped_early"], summary["best_step"]) == (6, True, 2)
    assert (
        "stopped early at step 6: loss did not improve for 2 evaluations (best " in result.stdout
    )  # said, not inferred
    assert summary["total_seconds"] >= summary["train_seconds"] > 0
    # checkpoints: the last two evaluations, DeepSpeed's `latest` points at the final one
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004", "step-00000006"]
    assert (checkpoints / "latest").read_text().strip() == "step-00000006"
    assert (
        json.loads((checkpoints / "step-00000006" / "trainer_state.json").read_text())["early_stopping"][
            "bad_evaluations"
        ]
        == 2
    )
    # training rows carry every field, every rank's samples are counted, and the loss goes down
    train = rows(out, "train")
    assert [r["step"] for r in train] == [2, 4, 6] and all(TRAIN_ROW <= set(r) for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[0]["samples_per_s"] > 0 and train[0]["skipped_samples"] == 0
    assert all(r["packing_factor"] > 2 and r["speech_seconds_per_s"] < r["audio_seconds_per_s"] for r in train)
    config = json.loads((out / "config.json").read_text())
    assert (
        config["deepspeed"]["bf16"]["enabled"] is (precision == "bf16")
        and config["deepspeed"]["train_batch_size"] == 3 * 2 * 2
    )

    best = out / "best"
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    } <= {p.name for p in best.iterdir()}
    export = json.loads((out / "summary.json").read_text())["export"]
    assert (export["format"], export["engine"], export["samples"], export["skipped_samples"]) == (
        "ct2",
        "faster-whisper",
        8,
        0,
    )
    assert 0 <= export["wer"] and (out / "best-ct2" / "model.bin").is_file() and export["path"] == str(out / "best-ct2")
    assert "## faster-whisper (CTranslate2)" in (best / "README.md").read_text()
    ggml = json.loads((out / "summary.json").read_text())["export_ggml"]
    assert (ggml["format"], ggml["engine"], ggml["ftype"], ggml["samples"], ggml["skipped_samples"]) == (
        "ggml",
        "whisper.cpp",
        "f16",
        8,
        0,
    )
    assert 0 <= ggml["wer"] and ggml["path"] == str(out / "best-ggml.bin") and (out / "best-ggml.bin").is_file()
    assert "## whisper.cpp (ggml)" in (best / "README.md").read_text()
    generation = json.loads((best / "generation_config.json").read_text())
    assert (generation["language"], generation["task"]) == ("br", "transcribe")
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(best))
    assert isinstance(asr(speech_like(1.0), generate_kwargs={"max_new_tokens": 4})["text"], str)


def test_resume_continues_exactly_where_an_interrupted_run_stopped(shards, tiny_whisper, tmp_path):
    # with augmentation, timestamps and previous text on: drawn for (seed, epoch, key), the resumed job sees the
    # same masked, sped-up batches with the same windows labelled with timestamps and prompted; with two named
    # training sources (b at half: a different half each epoch) and two named validation sets, scored apart
    common = (
        "--max-steps",
        "8",
        "--eval-every",
        "4",
        "--metric",
        "loss",
        "--patience",
        "0",
        "--seed",
        "3",
        "--spec-augment",
        "--speed-perturb",
        "0.9,1.1",
        "--timestamps",
        "0.5",
        "--prev-text",
        "0.5",
    )
    data = (
        *("--train-shards", f"a={shards / 'train'}", "--train-shards", f"b={shards / 'validation'}@0.5"),
        *("--val-shards", f"v1={shards / 'validation'}", "--val-shards", f"v2={shards / 'train'}"),
    )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    first = run_training(shards, tiny_whisper, straight, *common, data=data)
    run_training(shards, tiny_whisper, interrupted, *common, "--stop-after-steps", "4", data=data)
    assert rows(interrupted, "summary")[-1]["step"] == 4
    resumed = launch(interrupted, "--resume")  # model, shards, schedule: all from the run's config.json
    assert "resumed from step 4 (epoch 0, batch 4)" in resumed.stdout  # mid-epoch: 24 + 8 × 0.5 = 28 samples, 5 batches

    def key_numbers(output: Path) -> list[tuple]:
        return [
            (r["kind"], r["step"], r.get("loss"), r.get("val_loss"), r.get("wer"))
            for r in read_metrics(output)
            if r["kind"] != "summary" and r["step"] > 4
        ]

    # Same seed, same data order (the stream is a function of seed, epoch, rank, worker), DeepSpeed restores
    # fp32 master weights, Adam moments, scheduler and step, and CPU kernels are deterministic: the numbers
    # after the interruption are identical; 1e-6 only absorbs float formatting.
    for got, want in zip(key_numbers(interrupted), key_numbers(straight), strict=True):
        assert got[:2] == want[:2]
        np.testing.assert_allclose(
            [x for x in got[2:] if x is not None], [x for x in want[2:] if x is not None], atol=1e-6
        )
    assert rows(interrupted, "summary")[-1]["step"] == rows(straight, "summary")[-1]["step"] == 8
    # utterances shown by source, since the run began (the resumed job adds to the interrupted one's)
    shown = [r["source_samples"] for r in rows(straight, "train")]
    assert [r["source_samples"] for r in rows(interrupted, "train") if r["step"] > 4] == shown[2:]
    assert all(set(s) == {"a", "b"} for s in shown) and shown[-1]["a"] > shown[0]["a"] > 0 and shown[-1]["b"] > 0
    assert sum(shown[-1].values()) == 8 * 3 * 2  # 8 steps of 3 utterances on 2 ranks
    for row in rows(straight, "eval"):  # each set on its own, and pooled
        assert {"wer/v1", "cer/v1", "wer/v2", "cer/v2", "wer", "cer"} <= set(row) and row["samples"] == 8 + 24
    # the leakage check at start: a is v2's shards, b is v1's; the model card lists both sources
    found = re.findall(r"overlap: training source (\w+) shares (\d+) sentences with validation set (\w+)", first.stdout)
    shared = {(source, val_set): int(n) for source, n, val_set in found}
    assert set(shared) == {("a", "v1"), ("a", "v2"), ("b", "v1"), ("b", "v2")}
    assert shared["a", "v2"] > 0 and shared["b", "v1"] > 0  # the same shards: every sentence is shared
    card = (straight / "best" / "README.md").read_text()
    assert "## Training sources" in card and "| b | `" in card and "| 0.5 |" in card
    final = [load_file(out / "best" / "model.safetensors") for out in (interrupted, straight)]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        torch.testing.assert_close(final[0][name], final[1][name], atol=1e-6, rtol=0)


def test_lora_with_optimizer_offload_resumes_exactly_and_saves_a_plain_merged_best(shards, tiny_whisper, tmp_path):
    """--lora on DeepSpeed ZeRO-2 with the optimizer states offloaded to CPU (configs/ds_zero2_offload.json) and
    gradient checkpointing: only the adapters train (rows say how many), a job stopped after 2 steps and resumed
    ends where the straight run does, and best/ is a plain Whisper (merged) with the adapter in best/adapter/."""
    common = ("--lora", "4", "--deepspeed", "configs/ds_zero2_offload.json", "--gradient-checkpointing")
    common += ("--max-steps", "4", "--eval-every", "2", "--metric", "loss", "--patience", "0", "--lr", "1e-2")
    common += ("--precision", "fp32")  # so that the frozen weights come back bit for bit
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_training(shards, tiny_whisper, straight, *common, ranks=1)
    run_training(shards, tiny_whisper, interrupted, *common, "--stop-after-steps", "2", ranks=1)
    assert "resumed from step 2" in launch(interrupted, "--resume", ranks=1).stdout

    def numbers(output: Path) -> list[tuple]:
        return [(r["kind"], r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(output) if r["step"] > 2]

    for got, want in zip(numbers(interrupted), numbers(straight), strict=True):
        assert got[:2] == want[:2]
        np.testing.assert_allclose([x for x in got[2:] if x], [x for x in want[2:] if x], atol=1e-6)
    train = rows(straight, "train")[-1]
    assert 0 < train["trainable_params"] < train["total_params"] / 10
    best = straight / "best"
    assert (best / "adapter" / "adapter_config.json").is_file()
    weights = load_file(best / "model.safetensors")
    assert not any("lora" in name for name in weights) and "model.encoder.layers.0.self_attn.q_proj.weight" in weights
    base = load_file(Path(tiny_whisper) / "model.safetensors")
    changed = [name for name in base if name in weights and not torch.equal(base[name].float(), weights[name])]
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)  # merged adapters
    assert "LoRA adapters of rank 4" in (best / "README.md").read_text()
    for output in (interrupted, straight):
        assert rows(output, "summary")[-1]["lora_rank"] == 4


def test_validation_on_two_ranks_over_http_scores_exactly_what_one_rank_does_locally(shards, wordy_whisper, tmp_path):
    # lr 0: the weights stay as loaded, so both runs evaluate the same model; fp32 so batching cannot flip a token.
    # The model writes words that depend on the audio, so equal scores are not 1.0 = 1.0 from empty predictions.
    # The 2-rank run reads train and validation shards from a real HTTP server, counts from its manifest.json.
    # Both decode with an n-gram LM fused into validation's search (--val-lm): exact across ranks too.
    lm = tmp_path / "br.arpa"
    sentences = (ROOT / "tests" / "data" / "lm" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    estimate([line.split() for line in sentences], 3).write(lm)
    common = ("--max-steps", "1", "--eval-every", "1", "--lr", "0", "--precision", "fp32", "--val-lm", str(lm))
    common += ("--val-lm-alpha", "1.0", "--val-lm-beta", "0.5")
    one, two = tmp_path / "one", tmp_path / "two"
    run_training(shards, wordy_whisper, one, *common, ranks=1)
    with serve_folder(shards) as url:
        over_http = [
            f"{url}/{split}/shard-{{000000..{len(list((shards / split).glob('*.tar'))) - 1:06d}}}.tar"
            for split in ("train", "validation")
        ]
        data = ("--train-shards", over_http[0], "--val-shards", over_http[1])
        run_training(shards, wordy_whisper, two, *common, data=data, ranks=2)
    options = json.loads((two / "config.json").read_text())["options"]
    assert options["train_shards"][0].startswith("http://127.0.0.1:") and options["val_lm"] == str(lm)
    (a,), (b,) = rows(one, "eval"), rows(two, "eval")
    assert a["cer"] not in (0.0, 1.0)  # real predictions: neither all empty nor all right
    scores = ("wer", "cer", "samples", "wer_raw", "wer_normalized", "cer_normalized", "wer_whisper_basic")
    assert {name: a[name] for name in scores} == {name: b[name] for name in scores} and a["samples"] == 8
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------- configuration errors


def _train_cli():
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def bad_json(tmp_path) -> Path:
    path = tmp_path / "broken.json"
    path.write_text('{"zero_optimization": {"stage": 2},}')
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-shards", "/nonexistent/train"], "--train-shards: /nonexistent/train: shard not found"),
        (
            ["--train-shards", "http://127.0.0.1:9/train/shard-000000.tar"],  # nothing listens on port 9: no manifest
            "--train-shards: http://127.0.0.1:9/train/shard-000000.tar: no sample counts for remote shards: serve "
            "http://127.0.0.1:9/manifest.json beside the split folders (tools/shard_corpus.py writes it) or pass the "
            "epoch "
            "size (--epoch-samples)",
        ),
        (["--language", "klingon"], "--language: unknown language 'klingon'"),
        (
            ["--speed-perturb", "fast"],
            "--speed-perturb: 'fast': give speed factors separated by commas, e.g. 0.9,1.0,1.1",
        ),
        (["--deepspeed", "{bad_json}"], "broken.json: not valid JSON"),
        (["--batch-size", "-2"], "--batch-size -2: must be at least 1"),
        (["--batch-size", "0", "--model", "openai/whisper-small"], "--batch-size 0: must be at least 1"),  # no hub call
        (["--resume", "--output-dir", "{tmp}/nothing"], "--resume: no checkpoint to resume"),
        (["--model", "{tmp}"], "--model:"),
        (["--metric", "long_wer"], "--metric long_wer: needs --val-long-form DATA, the long recordings to score"),
        (["--metric", "wer/other"], "--metric wer/other: not one of wer, cer, loss, long_wer, wer/validation"),
        (["--train-shards", "a={tmp}", "--train-shards", "a={tmp}"], "--train-shards: the name a is given twice"),
        (["--val-shards", "v={tmp}@2"], "--val-shards: a validation set has no @FACTOR"),
        (["--val-long-form", "{tmp}"], "no recording to transcribe (no audio + .txt pairs, no .ali files)"),
        (["--val-lm", "{tmp}/none.arpa"], "--val-lm: {tmp}/none.arpa: no such language model file"),
        (["--export", "onnx"], "--export onnx: use ct2, ggml or both, comma-separated (ct2,ggml)"),
        (["--export", "ct2,ggml"], "--export: the vocabulary (1996 tokens) is not laid out as whisper.cpp numbers it"),
    ],
)
def test_bad_configuration_is_one_clear_line_and_exit_2(shards, tiny_whisper, tmp_path, bad_json, args, message):
    args = [a.format(bad_json=bad_json, tmp=tmp_path) for a in args]
    message = message.replace("{tmp}", str(tmp_path))
    base = ["--model", tiny_whisper, "--output-dir", str(tmp_path / "run")]
    for option, split in (("--train-shards", "train"), ("--val-shards", "validation")):  # repeated: another source
        base += [] if option in args else [option, str(shards / split)]
    result = CliRunner().invoke(_train_cli(), base + args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    assert lines[0].count(message.split(":")[0]) == 1  # each problem once
    if message.startswith("--batch-size"):  # a cheap typo is reported without loading (or asking the hub for) the model
        assert "--model" not in lines[0]


def test_a_hub_model_that_cannot_be_reached_fails_fast_with_one_line(shards, tmp_path):
    """No cache, HF_HUB_OFFLINE unset, and the hub's endpoint refusing connections: transformers would retry for
    minutes; the check says what was tried and how to point --model at a local folder (the timeout only stops a
    hang)."""
    env = {name: value for name, value in os.environ.items() if name not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"))
    for script, data in (
        (
            "launch/train.py",
            [
                "--train-shards",
                str(shards / "train"),
                "--val-shards",
                str(shards / "validation"),
                "--output-dir",
                str(tmp_path / "run"),
            ],
        ),
        ("launch/evaluate.py", ["--data", str(shards / "validation")]),
    ):
        result = subprocess.run(
            [sys.executable, script, "--model", "openai/whisper-small", *data],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        for fragment in (
            "openai/whisper-small: not a local folder, not in the Hugging Face cache",
            str(tmp_path / "hf-home"),
            "127.0.0.1:9 cannot be reached",
            "point --model at a local folder",
        ):
            assert fragment in lines[0], lines[0]

"""Fault injection: each test injects one fault (bad files, damaged shards, a killed or signalled rank, a full
disk, a damaged checkpoint, a poisoned batch, a slow rank) and asserts what happens — nothing hangs, nothing
is lost without a trace, every error is one clear line. docs/reliability.md's table lists them."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import free_port, read_metrics, speech_like, write_speech_corpus

from wdsbr.corpus import open_corpus
from wdsbr.data import LoaderOptions, SkipCounter, batches_per_epoch, make_eval_loader, make_train_loader
from wdsbr.engine import checkpoint_problem, latest_checkpoint
from wdsbr.shards import ShardOptions, shard_corpus
from wdsbr.streams import list_shards

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
TOKEN = "hf_reliability_secret_token_987"


def _env(**extra: str) -> dict:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    for split, n, seed in (("train", 24, 0), ("validation", 6, 100)):
        write_speech_corpus(root / "corpus" / split, n, seed=seed)
    shard_corpus(
        open_corpus(root / "corpus"), root / "shards", ShardOptions(samples_per_shard=6, workers=1), progress=False
    )
    return root / "shards"


def train_command(model: str, train: str, val: str, output: Path, *args: str, ranks: int = 2) -> list[str]:
    return [
        DEEPSPEED,
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "launch/train.py",
        "--deepspeed",
        "configs/ds_zero2.json",
        "--model",
        model,
        "--train-shards",
        train,
        "--val-shards",
        val,
        "--output-dir",
        str(output),
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
        "6",
        *args,
    ]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """local rank -> pid of the trainer processes the deepspeed launcher started (not their DataLoader
    workers, which are forks with the same command line)."""
    import psutil

    pids = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        match = re.search(r"--local_rank=(\d+)", " ".join(child.cmdline()))
        if match and match.group(0) not in " ".join(child.parent().cmdline()):
            pids[int(match.group(1))] = child.pid
    return pids


# ------------------------------------------------------------------------------------------------------ data


def test_1_every_bad_input_is_in_a_shard_or_rejected_and_the_counts_add_up(tmp_path):
    corpus = tmp_path / "corpus"
    write_speech_corpus(corpus, 3)
    bad = corpus / "bad"
    bad.mkdir()
    (bad / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))  # a header, then noise
    flac = io.BytesIO()
    sf.write(flac, speech_like(2.0), 16000, format="FLAC")
    (bad / "truncated.flac").write_bytes(flac.getvalue()[:60])  # cut inside the header
    (bad / "zero.wav").write_bytes(b"")
    sf.write(bad / "latin1.wav", speech_like(1.0), 16000)
    (bad / "latin1.txt").write_bytes("Kenavo, ma c'harantez é".encode("latin-1"))
    sf.write(bad / "long.wav", speech_like(45.0), 16000)
    sf.write(bad / "no_transcript.wav", speech_like(1.0), 16000)
    (bad / "no_audio.txt").write_text("Demat")
    sf.write(bad / "empty.wav", speech_like(1.0), 16000)
    (bad / "empty.txt").write_text("   ")
    sf.write(bad / "Ur c'hi bras é.wav", speech_like(1.0), 16000)  # spaces, apostrophe, non-ASCII: kept
    (bad / "Ur c'hi bras é.txt").write_text("Ur c'hi bras")
    for stem in ("corrupt", "truncated", "zero", "long"):
        (bad / f"{stem}.txt").write_text("Demat")

    result = subprocess.run(
        [
            PYTHON,
            "tools/shard_corpus.py",
            str(corpus),
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--no-progress",
            "--val-fraction",
            "0",
            "--test-fraction",
            "0",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    reasons = {r["source"]: r["reason"] for r in manifest["rejected"]}
    assert reasons == {
        "bad/corrupt.wav": "unreadable_audio",
        "bad/truncated.flac": "unreadable_audio",
        "bad/zero.wav": "empty_audio",
        "bad/latin1.wav": "text_not_utf8",
        "bad/long.wav": "too_long",
        "bad/no_transcript.wav": "missing_transcript",
        "bad/no_audio.txt": "missing_audio",
        "bad/empty.wav": "empty_transcript",
    }
    counts = manifest["counts"]
    assert counts == {"found": 3 + 9, "kept": 4, "rejected": 8, "rejected_by_reason": counts["rejected_by_reason"]}
    assert counts["kept"] + counts["rejected"] == counts["found"]
    written = [json.loads(s["json"])["source"] for s in _read_all(list_shards(tmp_path / "out" / "train"))]
    assert "bad/Ur c'hi bras é.wav" in written and len(written) == 4
    assert "rejected 8" in result.stdout


def _read_all(urls: list[str]) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def _damage(shards: Path, tmp_path: Path) -> Path:
    """Copy the train shards: truncate one mid-member, append a member that is not audio to another."""
    bad = tmp_path / "damaged"
    shutil.copytree(shards, bad)
    first = bad / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with tarfile.open(bad / "shard-000001.tar", "a") as tar:
        for name, payload in (("zz_text_not_audio.flac", b"plain text"), ("zz_text_not_audio.txt", b"demat")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return bad


def test_3_member_names_that_try_to_escape_are_only_keys_and_nothing_is_written(tmp_path, tiny_processor):
    shard = tmp_path / "inside" / "evil.tar"
    shard.parent.mkdir()
    flac = io.BytesIO()
    sf.write(flac, speech_like(1.0), 16000, format="FLAC")
    with tarfile.open(shard, "w") as tar:
        for name, payload in (
            ("../escaped.flac", flac.getvalue()),
            ("../escaped.txt", b"demat"),
            (str(tmp_path / "absolute.flac"), flac.getvalue()),
            (str(tmp_path / "absolute.txt"), b"mat"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    # where a member named "../x" or "/abs/x" would land if anything unpacked it: the run's folders, the cwd,
    # the repository, the home folder, the shard folder's parents
    watched = {tmp_path, shard.parent, tmp_path.parent, Path.cwd(), ROOT, ROOT.parent, Path.home()}

    def snapshot() -> dict[Path, list[str]]:
        return {
            folder: sorted(
                p.name for p in (folder.rglob("*") if folder in (tmp_path, shard.parent) else folder.iterdir())
            )
            for folder in watched
        }

    before = snapshot()
    counter = SkipCounter()
    loader = make_eval_loader(
        str(shard),
        LoaderOptions(
            tiny_processor.tokenizer,
            list(tiny_processor.tokenizer.prefix_tokens),
            n_mels=80,
            micro_batch_size=4,
            num_workers=0,
            skip_counter=counter,
        ),
    )
    batches = list(loader)
    assert snapshot() == before  # nothing appeared anywhere
    # both samples were read as data, from memory: decoded audio, their texts, nothing skipped
    assert sorted(k for batch in batches for k in batch["keys"]) == sorted(["../escaped", str(tmp_path / "absolute")])
    assert sorted(t for batch in batches for t in batch["texts"]) == ["demat", "mat"] and counter.total() == 0
    assert all(batch["audio_seconds"] > 1.9 for batch in batches)
    # and no code path unpacks a shard to disk
    sources = [p for folder in ("wdsbr", "launch", "tools") for p in (ROOT / folder).rglob("*.py")]
    assert not [p for p in sources if re.search(r"\.extract(all)?\(", p.read_text())]


def test_4_uneven_shards_fewer_than_readers_same_batches_on_every_rank_and_each_sample_once(tmp_path, tiny_processor):
    corpus = tmp_path / "corpus"
    write_speech_corpus(corpus, 20)
    out = tmp_path / "out"
    shard_corpus(
        open_corpus(corpus),
        out,
        ShardOptions(val_fraction=0, test_fraction=0, samples_per_shard=14, workers=1),
        progress=False,
    )
    extra = tmp_path / "extra"
    write_speech_corpus(extra / "c", 1, seed=50)
    (extra / "c" / "spk0").rename(extra / "c" / "spk9")  # its own key, not spk0__utt000 again
    shard_corpus(
        open_corpus(extra / "c"),
        extra / "out",
        ShardOptions(val_fraction=0, test_fraction=0, workers=1),
        progress=False,
    )
    urls = list_shards(out / "train") + list_shards(extra / "out" / "train")  # 14, 6 and 1 samples for 4 readers
    prompt = list(tiny_processor.tokenizer.prefix_tokens)
    batches = []
    for rank in range(2):
        loader = make_train_loader(
            urls,
            LoaderOptions(
                tiny_processor.tokenizer,
                prompt,
                n_mels=80,
                micro_batch_size=2,
                num_workers=2,
                rank=rank,
                world_size=2,
                shuffle_buffer=4,
            ),
        )
        batches.append([batch["keys"] for batch in loader])
    assert [len(rank) for rank in batches] == [batches_per_epoch(21, 2, 2)] * 2 == [6, 6]
    seen = [key for rank in batches for keys in rank for key in keys]
    assert len(set(seen)) == 21 and len(seen) == 24  # all 21, and 3 repeats fill the last batches


# -------------------------------------------------------------------------------------------------- training


def test_2_and_11_damaged_shards_and_a_slow_rank_one_training_run_ends_normally(shards, tiny_whisper, tmp_path):
    """A truncated shard, a member that is not audio, rank 1 behind (its shards arrive through a slow pipe, so
    rank 0 waits for it at every step's collective), and early stopping decided by rank 0 at the second
    evaluation: no hang, both ranks exit 0, and the train rows show rank 1 was the one waiting for data."""
    damaged = _damage(shards / "train", tmp_path)
    # every shard through a pipe that sleeps 2 s when the reader is rank 1 (the launcher sets RANK per process)
    slow_pattern = f"pipe:sh -c 'if [ \"$RANK\" = 1 ]; then sleep 2; fi; cat {damaged}/shard-{{000000..000003}}.tar'"
    command = train_command(
        tiny_whisper,
        slow_pattern,
        str(shards / "validation"),
        tmp_path / "run",
        "--epoch-samples",
        "24",
        "--max-steps",
        "40",
        "--eval-every",
        "2",
        "--metric",
        "loss",
        "--min-delta",
        "100",
        "--patience",
        "1",
    )
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = read_metrics(tmp_path / "run")
    summary = [r for r in rows if r["kind"] == "summary"][-1]
    assert (summary["finished"], summary["stopped_early"], summary["step"]) == (True, True, 4)
    train = [r for r in rows if r["kind"] == "train"]
    assert train[-1]["skipped_samples"] >= 2  # the damaged members, counted on both ranks and logged
    # up to the step where rank 0 decided, rank 1 waited for its data ≥ 2 s longer (one slow shard at least)
    waits = np.sum([r["data_wait_seconds"] for r in train if r["step"] <= summary["step"]], axis=0)
    assert waits[1] - waits[0] >= 1.5, waits


def test_6_a_killed_rank_fails_the_job_fast_the_checkpoint_survives_and_resume_continues(
    shards, tiny_whisper, tmp_path
):
    out = tmp_path / "run"
    command = train_command(
        tiny_whisper,
        str(shards / "train"),
        str(shards / "validation"),
        out,
        "--max-steps",
        "400",
        "--eval-every",
        "2",
        "--patience",
        "0",
        "--dist-timeout-minutes",
        "1",
    )
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(
            command, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for(lambda: latest_checkpoint(out / "checkpoints") is not None, 300, "a first checkpoint")
            os.kill(rank_pids(launcher)[1], signal.SIGKILL)
            started = time.monotonic()
            code = launcher.wait(timeout=180)
            failed_after = time.monotonic() - started
        finally:
            subprocess.run(["pkill", "-KILL", "-g", str(launcher.pid)])  # whatever is left of the job
            launcher.wait()
    # The survivor's next collective fails on the dead peer (gloo), DeepSpeed's launcher sees a rank gone (it polls
    # every second) and stops the rest, giving them at most 30 s (terminate_process_tree): 5.5 s measured here.
    # docs/reliability.md says "within seconds"; 60 s bounds it (twice that grace) without timing a shared machine.
    print(f"the job failed {failed_after:.1f} s after rank 1 was killed")
    assert code != 0 and failed_after < 60, failed_after
    tag = latest_checkpoint(out / "checkpoints")
    assert tag is not None and checkpoint_problem(out / "checkpoints" / tag, 2) is None
    step = int(tag.split("-")[1])
    resumed = subprocess.run(
        [
            DEEPSPEED,
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "launch/train.py",
            "--output-dir",
            str(out),
            "--resume",
            "--max-steps",
            str(step + 2),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stdout
    assert json.loads((out / "summary.json").read_text())["step"] == step + 2


def test_7_sigterm_to_the_launcher_checkpoints_and_exits_cleanly_and_the_token_never_leaks(
    shards, tiny_whisper, tmp_path
):
    """SIGTERM to the launcher's process group, as a terminal, `timeout`, systemd or Slurm deliver it. (DeepSpeed's
    single-node `deepspeed` runner does not forward a SIGTERM sent to its own pid alone: the ranks go on.)"""
    out, exits = tmp_path / "run", tmp_path / "exits"
    command = train_command(
        tiny_whisper,
        str(shards / "train"),
        str(shards / "validation"),
        out,
        "--max-steps",
        "400",
        "--eval-every",
        "100",
        "--num-workers",
        "2",
    )
    # each rank runs under tests/rank_exit_status.py, which records the exit status the OS reports for it
    script = command.index("launch/train.py")
    command = [
        DEEPSPEED,
        "--no_python",
        "--no_local_rank",
        *command[1:script],
        PYTHON,
        str(ROOT / "tests" / "rank_exit_status.py"),
        str(exits),
        PYTHON,
        "-u",
        *command[script:],
    ]
    with open(tmp_path / "stdout.log", "w") as stdout_log, open(tmp_path / "stderr.log", "w") as stderr_log:
        launcher = subprocess.Popen(
            command, cwd=ROOT, env=_env(HF_TOKEN=TOKEN), stdout=stdout_log, stderr=stderr_log, start_new_session=True
        )
        try:
            wait_for(
                lambda: (out / "metrics.jsonl").is_file() and "train" in (out / "metrics.jsonl").read_text(),
                300,
                "the first training row",
            )
            os.killpg(launcher.pid, signal.SIGTERM)
            # the `deepspeed` runner dies at once; wait for the ranks (same process group) to finish their step
            wait_for(
                lambda: (
                    launcher.poll() is not None  # reaps the runner, or pgrep would count its zombie
                    and subprocess.run(["pgrep", "-g", str(launcher.pid)], capture_output=True).returncode
                ),
                120,
                "every process of the job to exit",
            )
        finally:
            subprocess.run(["pkill", "-KILL", "-g", str(launcher.pid)])
            launcher.wait()
    stdout, stderr = (tmp_path / "stdout.log").read_text(), (tmp_path / "stderr.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == "SIGTERM" and summary["finished"] is False
    tag = latest_checkpoint(out / "checkpoints")
    assert tag == f"step-{summary['step']:08d}" and checkpoint_problem(out / "checkpoints" / tag, 2) is None
    assert "checkpointing and stopping" in stdout
    assert "Traceback" not in stdout + stderr
    # DeepSpeed's launcher exits 1 after forwarding a SIGTERM (its own choice); the ranks themselves exited 0
    assert {p.name: json.loads(p.read_text())["returncode"] for p in exits.glob("rank-*.json")} == {
        "rank-0.json": 0,
        "rank-1.json": 0,
    }
    # 13: the Hugging Face token in the environment is in no log, metric or saved config
    everything = (
        stdout
        + stderr
        + "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    )
    assert TOKEN not in everything


def test_8_a_failed_save_of_best_keeps_the_previous_best_and_says_why(tiny_whisper, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the kernel refuse writes, as a full disk does."""
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from wdsbr.model import load_model, load_processor, save_model_atomic
        model, processor = load_model({tiny_whisper!r}), load_processor({tiny_whisper!r})
        save_model_atomic(model, processor, {str(tmp_path / "best")!r}, "br")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            save_model_atomic(model, processor, {str(tmp_path / "best")!r}, "br")
        except OSError as error:
            print("refused:", error)
    """)
    result = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert "refused:" in result.stdout and "too large" in result.stdout.lower(), result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folder left behind
    from wdsbr.model import load_model

    reloaded, original = load_model(str(tmp_path / "best")), load_model(tiny_whisper)
    for (name, a), b in zip(reloaded.state_dict().items(), original.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy()), name  # the previous best, not the failed one


def _poison_one_sample(shards: Path, tmp_path: Path) -> tuple[Path, str]:
    """Copy the train shards and replace the first sample of one shard by a float WAV of samples at 1e38:
    finite (decoding accepts it), but its power overflows float32, so its features and loss are not finite.
    Only the rank that reads that shard sees it."""
    import webdataset as wds

    poisoned = tmp_path / "poisoned"
    shutil.copytree(shards, poisoned)
    target = poisoned / "shard-000002.tar"
    samples = list(wds.WebDataset(str(target), shardshuffle=False, empty_check=False))
    loud = io.BytesIO()
    sf.write(loud, np.full(16_000, 1e38, np.float32), 16_000, format="WAV", subtype="FLOAT")
    with wds.TarWriter(str(target), encoder=False) as writer:
        for index, sample in enumerate(samples):
            fields = {name: value for name, value in sample.items() if not name.startswith("__") or name == "__key__"}
            if index == 0:
                fields.pop("flac")
                fields["wav"] = loud.getvalue()
            writer.write(fields)
    return poisoned, samples[0]["__key__"]


def test_8_and_10_through_the_trainer_a_failed_best_save_and_a_non_finite_loss_on_one_rank(
    shards, tiny_whisper, tmp_path
):
    """Two ranks. One sample on one rank's shard makes a non-finite loss: the cross-rank vote skips that
    micro-batch on both ranks (no optimizer step counts it). After the first best/ is written, its temporary
    folder is made impossible to create: every later save fails, the run says why and goes on, the old best/ loads."""
    poisoned, bad_key = _poison_one_sample(shards / "train", tmp_path)
    out = tmp_path / "run"
    command = train_command(
        tiny_whisper,
        str(poisoned),
        str(shards / "validation"),
        out,
        "--max-steps",
        "6",
        "--eval-every",
        "2",
        "--metric",
        "loss",
        "--min-delta",
        "-1000",
        "--patience",
        "0",
    )
    with open(tmp_path / "stdout.log", "w") as stdout_log:
        launcher = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=stdout_log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (out / "best" / "model.safetensors").is_file(), 300, "the first best/")
            (out / ".best.tmp").write_text("in the way")  # save_model_atomic's temporary folder cannot be made now
            code = launcher.wait(timeout=600)
        finally:
            launcher.kill()
            launcher.wait()
    stdout = (tmp_path / "stdout.log").read_text()
    assert code == 0, stdout[-4000:]
    rows = read_metrics(out)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert all(r["is_best"] for r in evals) and [r["step"] for r in evals] == [2, 4, 6]  # --min-delta -1000
    failed = [r for r in evals if r["best_save_error"]]
    assert failed and failed[-1]["step"] == 6 and "not updated" in failed[-1]["best_save_error"]
    assert f"error: step 6: {out / 'best'}: not updated" in stdout  # said, and the run went on to its last step
    saved = [r["step"] for r in evals if not r["best_save_error"]]
    from transformers import WhisperForConditionalGeneration

    WhisperForConditionalGeneration.from_pretrained(str(out / "best"))  # the last good best/ loads
    assert saved and max(saved) < 6 and not list(out.glob(".best.old"))
    # 10: the poisoned micro-batch was skipped on both ranks, counted, and named
    summary = json.loads((out / "summary.json").read_text())
    state = json.loads((out / "checkpoints" / f"step-{summary['step']:08d}" / "trainer_state.json").read_text())
    assert state["nonfinite_batches"] >= 1 and "non-finite loss, micro-batch skipped" in stdout and bad_key in stdout
    # every micro-batch consumed either stepped the optimizer (on both ranks: DeepSpeed's step is global) or was
    # skipped by the vote: 4 micro-batches per epoch (24 samples, 2 ranks x 3)
    consumed = state["epoch"] * 4 + state["batch_in_epoch"]
    assert consumed == summary["step"] + state["nonfinite_batches"], (state, summary)
    assert all(math.isfinite(r["loss"]) for r in rows if r["kind"] == "train")


def test_9_resume_falls_back_past_a_damaged_checkpoint_and_refuses_when_none_is_intact(shards, tiny_whisper, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        train_command(
            tiny_whisper,
            str(shards / "train"),
            str(shards / "validation"),
            out,
            "--max-steps",
            "6",
            "--eval-every",
            "2",
            "--patience",
            "0",
        ),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "summary.json").unlink()  # pretend the job died after its last checkpoint
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004", "step-00000006"]
    broken = next((checkpoints / "step-00000006").glob("*rank_1_*optim_states.pt"))
    broken.write_bytes(broken.read_bytes()[:-5000])  # truncated
    resume = [
        DEEPSPEED,
        "--num_gpus",
        "2",
        "--master_port",
        "0",
        "launch/train.py",
        "--output-dir",
        str(out),
        "--resume",
    ]
    resume[4] = str(free_port())
    fell_back = subprocess.run(resume, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert fell_back.returncode == 0, fell_back.stderr[-3000:]
    assert f"skipping a damaged checkpoint: {broken} is" in fell_back.stderr
    assert "resumed from step 4" in fell_back.stdout

    (out / "summary.json").unlink()
    for tag in ("step-00000004", "step-00000006"):
        if (checkpoints / tag).is_dir():
            (checkpoints / tag / "mp_rank_00_model_states.pt").unlink()
    resume[4] = str(free_port())
    refused = subprocess.run(resume, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert (
        refused.returncode == 2
    )  # a configuration error, as docs/training.md says (the launcher passes the rank's code on)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0] and "Traceback" not in refused.stderr


def test_10_a_poisoned_batch_is_skipped_on_every_rank_and_training_goes_on(tiny_whisper, tmp_path):
    """A real DeepSpeed engine (1 rank, gloo): a batch of NaN features gives a NaN loss; the weights must not
    move, and the next clean batch must train."""
    script = textwrap.dedent(f"""
        import json, torch
        from wdsbr.engine import build_engine, init_distributed, resolve_ds_config, load_ds_config, training_step
        from wdsbr.model import load_model
        init_distributed(1)
        settings = dict(micro_batch_size=2, grad_accum_steps=1, lr=1e-3, weight_decay=0.0, max_grad_norm=1.0,
                        warmup_steps=1, max_steps=10, lr_schedule="linear", precision="fp32")
        config, _, _ = resolve_ds_config(load_ds_config("configs/ds_zero2.json"), settings, set(), world_size=1,
                                         device_type="cpu")
        engine = build_engine(load_model({tiny_whisper!r}), config)
        labels = torch.tensor([[5, 6, 7, 1], [5, 6, 1, -100]])
        clean = {{"input_features": torch.randn(2, 80, 3000), "labels": labels}}
        poisoned = {{"input_features": torch.full((2, 80, 3000), float("nan")), "labels": labels}}
        before = [p.detach().clone() for p in engine.module.parameters()]
        skipped = training_step(engine, poisoned) is None
        unchanged = all(torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
        for _ in range(3):  # DeepSpeed's warm-up lasts at least 2 steps, starting from lr 0
            loss = training_step(engine, clean)
        moved = any(not torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
        trained = loss is not None and bool(torch.isfinite(loss))
        print(json.dumps(dict(skipped=skipped, unchanged=unchanged, trained=trained, moved=moved,
                              steps=engine.global_steps)))
    """)
    env = _env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"skipped": True, "unchanged": True, "trained": True, "moved": True, "steps": 3}


# -------------------------------------------------------------------------------------------- inputs, secrets


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tools/shard_corpus.py", "/nonexistent/corpus", "{tmp}/out"], "/nonexistent/corpus: no such file or folder"),
        (["tools/shard_corpus.py", "{tmp}/c", "{tmp}/out", "--samples-per-shard", "-5"], "--samples-per-shard"),
        (["tools/peek_batch.py", "--model", "{notok}", "--shards", "{shards}"], "error: "),
        (["tools/peek_batch.py", "--model", "{tiny}", "--shards", "{tmp}/none"], "none: shard not found"),
        (
            ["tools/peek_batch.py", "--model", "{tiny}", "--shards", "{shards}", "--language", "klingon"],
            "unknown language",
        ),
        (["tools/make_tiny_whisper.py", "{tmp}/m", "--texts", "/nonexistent"], "does not exist"),
        (
            ["launch/train.py", "--model", "{notok}", "--train-shards", "{shards}", "--val-shards", "{shards}"],
            "--model:",
        ),
        (
            [
                "launch/train.py",
                "--model",
                "{tiny}",
                "--train-shards",
                "{shards}",
                "--val-shards",
                "{shards}",
                "--deepspeed",
                "{badjson}",
            ],
            "not valid JSON",
        ),
        (
            [
                "launch/train.py",
                "--model",
                "{tiny}",
                "--train-shards",
                "{shards}",
                "--val-shards",
                "{shards}",
                "--batch-size",
                "-4",
            ],
            "--batch-size -4",
        ),
    ],
)
def test_12_every_cli_says_one_clear_line_and_exits_non_zero(argv, message, shards, tiny_whisper, tmp_path):
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(Path(tiny_whisper) / name, no_tokenizer)
    (tmp_path / "c").mkdir()
    (tmp_path / "bad.json").write_text("{ not json")
    values = dict(
        tmp=tmp_path, notok=no_tokenizer, tiny=tiny_whisper, shards=shards / "train", badjson=tmp_path / "bad.json"
    )
    argv = [a.format(**values) for a in argv]
    result = subprocess.run([PYTHON, *argv], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-2000:]


class _RunsCode:
    """Unpickling this runs a shell command: what a tampered checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_14_a_checkpoint_whose_pickle_would_run_code_is_refused_and_nothing_runs(shards, tiny_whisper, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    done = subprocess.run(
        train_command(
            tiny_whisper,
            str(shards / "train"),
            str(shards / "validation"),
            out,
            "--max-steps",
            "2",
            "--eval-every",
            "2",
            "--patience",
            "0",
            ranks=1,
        ),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "summary.json").unlink()  # as if the job had died after its checkpoint
    planted = out / "checkpoints" / "step-00000002" / "mp_rank_00_model_states.pt"
    torch.save({"module": _RunsCode(marker)}, planted)  # a well-formed zip (CRCs fine): only unpickling tells
    resumed = subprocess.run(
        [
            DEEPSPEED,
            "--num_gpus",
            "1",
            "--master_port",
            str(free_port()),
            "launch/train.py",
            "--output-dir",
            str(out),
            "--resume",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert not marker.exists()  # the pickle's code never ran
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error: ")]
    assert resumed.returncode == 2 and len(errors) == 1 and "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
    assert f"{planted}: refused" in errors[0] and "not only weights" in errors[0]


def test_14_every_torch_load_is_weights_only():
    sources = [p for folder in ("wdsbr", "launch", "tools") for p in (ROOT / folder).rglob("*.py")]
    calls = [(p.name, line.strip()) for p in sources for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls

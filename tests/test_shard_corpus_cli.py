"""tools/shard_corpus.py as a user runs it: a subprocess from the repo root, its exit code, stdout and stderr."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "shard_corpus.py"
TOKEN = "hf_cli_secret_token_123"


def shard(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_corpus(root: Path, count: int = 6) -> Path:
    for i in range(count):
        folder = root / f"spk{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"utt{i}.wav", 0.2 * np.sin(np.arange(8_000 + 800 * i) / 3).astype(np.float32), 16_000)
        (folder / f"utt{i}.txt").write_text(f"Demat {i}\n", encoding="utf-8")
    (root / "orphan.txt").write_text("no audio", encoding="utf-8")
    return root


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr  # as every CLI of the project: a user's mistake is exit 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_groups_options_by_topic():
    result = shard("--help")
    assert result.returncode == 0
    for section in ("Source:", "Splits:", "Filtering:", "Shards:", "Run:"):
        assert section in result.stdout
    assert "python tools/shard_corpus.py ./corpus shards/" in SCRIPT.read_text()


def test_shards_a_folder_and_prints_a_summary(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    output = tmp_path / "shards"
    result = shard(
        corpus, output, "--workers", "2", "--samples-per-shard", "2", "--val-fraction", "0.2", "--test-fraction", "0.2"
    )

    assert result.returncode == 0, result.stderr
    assert "kept 6 of 7 inputs; rejected 1 (missing_audio 1)" in result.stdout
    for split in ("train", "validation", "test"):
        assert f"  {split}" in result.stdout
    assert "clips/s" in result.stdout and "MB/s" in result.stdout
    assert f"wrote {output / 'manifest.json'}" in result.stdout
    assert "sharding" in result.stderr  # the progress bar goes to stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["counts"] == {"found": 7, "kept": 6, "rejected": 1, "rejected_by_reason": {"missing_audio": 1}}
    assert sum(manifest["splits"][split]["samples"] for split in manifest["splits"]) == 6
    assert manifest["options"]["workers"] == 2 and manifest["options"]["samples_per_shard"] == 2
    if shutil.which("tar"):  # the shards are plain tars
        first = output / manifest["splits"]["train"]["shards"][0]["file"]
        listing = subprocess.run(["tar", "tf", str(first)], capture_output=True, text=True, check=True).stdout.split()
        assert len(listing) == 3 * manifest["splits"]["train"]["shards"][0]["samples"]
        assert {name.rsplit(".", 1)[1] for name in listing} == {"flac", "json", "txt"}


def test_an_empty_split_the_options_ask_for_is_warned_about_and_unknown_speakers_are_said_so(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", count=6)  # two speakers, spk0 and spk1
    result = shard(
        corpus,
        tmp_path / "by-speaker",
        "--workers",
        "1",
        "--no-progress",
        "--speaker-from-folder",
        "--val-fraction",
        "0.05",
        "--test-fraction",
        "0",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "by-speaker" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 6  # both speakers hash to train
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert (
        len(warnings) == 1 and "the validation split is empty although --val-fraction 0.05 asks for it" in warnings[0]
    )
    assert "train shares 0 speakers" in result.stdout  # speakers are known here (folders)

    result = shard(
        corpus,
        tmp_path / "no-speakers",
        "--workers",
        "1",
        "--no-progress",
        "--val-fraction",
        "0.3",
        "--test-fraction",
        "0.3",
    )
    assert result.returncode == 0, result.stderr
    assert "(speakers unknown)" in result.stdout and "0 speakers" not in result.stdout


def test_missing_source_is_one_error_line_naming_it(tmp_path):
    result = shard(tmp_path / "no-such-corpus", tmp_path / "shards")
    assert_one_line_error(result, "no-such-corpus")
    assert not (tmp_path / "shards").exists()


def test_a_source_without_inputs_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(shard(tmp_path / "empty", tmp_path / "shards"), "empty", "no inputs found")


def test_non_empty_output_is_refused_unless_overwrite(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", count=2)
    output = tmp_path / "shards"
    assert shard(corpus, output, "--workers", "1", "--no-progress").returncode == 0
    assert_one_line_error(shard(corpus, output, "--workers", "1"), str(output), "--overwrite")
    result = shard(
        corpus, output, "--workers", "1", "--overwrite", "--no-progress", "--val-fraction", "0", "--test-fraction", "0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no bar, no warning (no split asked for is empty)


def test_bad_options_are_reported_together(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", count=1)
    result = shard(
        corpus, tmp_path / "shards", "--val-fraction", "0.7", "--test-fraction", "0.5", "--samples-per-shard", "0"
    )
    assert_one_line_error(result, "--val-fraction + --test-fraction", "--samples-per-shard 0")


def test_hf_dataset_with_a_token_that_never_appears_in_output(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hfds"
    (folder / "data").mkdir(parents=True)
    for split in ("train", "test"):
        buffer = io.BytesIO()
        sf.write(buffer, np.full(12_000, 0.1, np.float32), 24_000, format="WAV")
        datasets.Dataset.from_dict(
            {
                "audio": [{"bytes": buffer.getvalue(), "path": f"{split}.wav"}],
                "sentence": ["Demat"],
                "client_id": ["yann"],
            }
        ).cast_column("audio", datasets.Audio()).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    env = {"HF_HOME": str(tmp_path / "hf-home")}

    result = shard("--hf", folder, tmp_path / "shards", "--token", TOKEN, "--workers", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 2 inputs" in result.stdout
    manifest_text = (tmp_path / "shards" / "manifest.json").read_text()
    assert TOKEN not in manifest_text + result.stdout + result.stderr
    assert json.loads(manifest_text)["source"]["splits"] == {"train": "train", "test": "test"}

    result = shard("--hf", folder, tmp_path / "other", "--hf-split", "other", env={**env, "HF_TOKEN": TOKEN})
    assert_one_line_error(result, "'other'")
    assert TOKEN not in result.stdout + result.stderr
    result = shard("--hf", tmp_path / "not-there", tmp_path / "other", env={**env, "HF_TOKEN": TOKEN})
    assert_one_line_error(result, "not-there")
    assert TOKEN not in result.stdout + result.stderr
    for bad in (["--hf-split", "other"], []):  # --debug shows the traceback, and still not the token
        source = folder if bad else tmp_path / "not-there"
        result = shard("--hf", source, tmp_path / "other", *bad, "--debug", "--token", TOKEN, env=env)
        assert result.returncode != 0 and "Traceback" in result.stderr, result.stderr
        assert TOKEN not in result.stdout + result.stderr


def test_ali_windows_cuts_recordings_into_windows_of_max_seconds_with_their_segments(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    sf.write(root / "show.wav", 0.2 * np.sin(np.arange(20 * 16_000) / 3).astype(np.float32), 16_000)
    (root / "show.ali").write_text(
        "".join(f"Frazenn {i}. {{start: {2 * i}; end: {2 * i + 1.5}}}\n" for i in range(9)), encoding="utf-8"
    )
    result = shard(
        root,
        tmp_path / "shards",
        "--ali-windows",
        "--max-seconds",
        "7.5",
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    import webdataset as wds

    samples = list(wds.WebDataset(str(tmp_path / "shards" / "train" / "shard-000000.tar"), shardshuffle=False))
    windows = sorted((json.loads(s["json"])["start"], json.loads(s["json"])["segments"]) for s in samples)
    assert [start for start, _ in windows] == [0, 8, 16]  # 4 + 4 + 1 sentences: 7.5 s each at most
    assert windows[1][1] == [
        [0, 1.5, "Frazenn 4."],
        [2, 3.5, "Frazenn 5."],
        [4, 5.5, "Frazenn 6."],
        [6, 7.5, "Frazenn 7."],
    ]
    assert_one_line_error(shard(tmp_path / "other", "--ali-windows", "--hf", "x"), "--ali-windows")


def test_exclude_sentences_rejects_a_leaked_sentence_whatever_its_case_and_punctuation(tmp_path):
    """The leakage guard: utt3 says "Demat 3", planted in the validation text as "DEMAT 3!"; a folder of ID.txt
    and earlier shards work as sources of sentences too. The sample is rejected as leaked_sentence, named."""
    corpus = write_corpus(tmp_path / "corpus")
    held_out = tmp_path / "validation.txt"
    held_out.write_text("DEMAT 3!\nsentence nobody says\n", encoding="utf-8")
    texts = tmp_path / "test-texts"
    texts.mkdir()
    (texts / "t1.txt").write_text("demat, 5", encoding="utf-8")
    result = shard(
        corpus,
        tmp_path / "out",
        "--exclude-sentences",
        held_out,
        "--exclude-sentences",
        texts,
        "--workers",
        "1",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "excluding 3 sentences" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    leaked = sorted(r["source"] for r in manifest["rejected"] if r["reason"] == "leaked_sentence")
    assert leaked == ["spk1/utt3.wav", "spk1/utt5.wav"] and manifest["counts"]["kept"] == 4
    assert manifest["excluded_sentences"] == {"from": [str(held_out), str(texts)], "sentences": 3}
    # shards as the source of sentences: what the first run wrote (4 clips), excluded from a second run, leaves
    # only the two the first one rejected
    again = shard(
        corpus, tmp_path / "again", "--exclude-sentences", tmp_path / "out", "--workers", "1", "--no-progress"
    )
    assert again.returncode == 0, again.stderr
    counts = json.loads((tmp_path / "again" / "manifest.json").read_text())["counts"]
    assert counts["kept"] == 2 and counts["rejected_by_reason"]["leaked_sentence"] == 4

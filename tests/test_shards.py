"""wdsbr.shards: decoding in a pool, validation, splits, shard files and the manifest, end to end on small corpora."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from wdsbr.corpus import open_corpus, open_hf_corpus
from wdsbr.shards import MANIFEST, ShardError, ShardOptions, check_options, ordered_map, shard_corpus
from wdsbr.streams import read_manifest

SPLITS = ("train", "validation", "test")


def write_tone(
    path: Path,
    seconds: float = 0.5,
    sample_rate: int = 16_000,
    channels: int = 1,
    fmt: str | None = None,
    frequency: float = 440.0,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    sf.write(path, np.stack([tone] * channels, axis=1) if channels > 1 else tone, sample_rate, format=fmt)
    return path


def write_text(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def write_pairs(root: Path, count: int, *, seconds: float = 0.4, sample_rate: int = 16_000) -> None:
    for i in range(count):
        write_tone(root / f"spk{i % 3}" / f"utt{i:03d}.wav", seconds=seconds + 0.01 * i, sample_rate=sample_rate)
        write_text(root / f"spk{i % 3}" / f"utt{i:03d}.txt", f"Demat {i}")


def run(source: Path, output: Path, **options) -> dict:
    options.setdefault("workers", 1)
    return shard_corpus(open_corpus(source, exclude=output), output, ShardOptions(**options), progress=False)


def read_split(output: Path, manifest: dict, split: str) -> list[dict]:
    """Samples of a split as plain webdataset reads them, in shard order."""
    urls = [str(output / shard["file"]) for shard in manifest["splits"][split]["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False)) if urls else []


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


# --- what is kept and what is rejected -------------------------------------------------------------------


def test_every_input_is_in_a_shard_or_rejected_with_its_reason(tmp_path):
    root = tmp_path / "corpus"
    write_pairs(root, 3)
    bad = root / "bad"
    write_tone(bad / "short.wav", seconds=0.1)
    write_tone(bad / "long.wav", seconds=31.0, sample_rate=8_000)
    write_tone(bad / "very_long.flac", seconds=70.0, sample_rate=8_000)  # refused from its header, not decoded
    sf.write(bad / "no_frames.wav", np.zeros(0, np.float32), 16_000)
    write_text(bad / "zero_bytes.wav", b"")
    write_text(bad / "junk.wav", b"this is not audio " * 20)
    write_tone(bad / "latin1.wav")
    write_tone(bad / "blank.wav")
    write_tone(bad / "no_text.wav")
    write_tone(bad / "twin.wav")
    write_tone(bad / "twin.flac")
    for stem in ["short", "long", "very_long", "no_frames", "zero_bytes", "junk", "twin"]:
        write_text(bad / f"{stem}.txt", "Demat")
    write_text(bad / "latin1.txt", "Demat é".encode("latin-1"))
    write_text(bad / "blank.txt", "  \n")
    write_text(bad / "no_audio.txt", "Demat")
    write_tone(bad / "dangling.wav")
    (bad / "dangling.txt").symlink_to(bad / "gone.txt")  # listed, but cannot be read

    manifest = run(root, tmp_path / "out", min_seconds=0.2, max_seconds=30)

    reasons = {rejection["source"]: rejection["reason"] for rejection in manifest["rejected"]}
    assert reasons == {
        "bad/short.wav": "too_short",
        "bad/long.wav": "too_long",
        "bad/very_long.flac": "too_long",
        "bad/no_frames.wav": "empty_audio",
        "bad/zero_bytes.wav": "empty_audio",
        "bad/junk.wav": "unreadable_audio",
        "bad/latin1.wav": "text_not_utf8",
        "bad/blank.wav": "empty_transcript",
        "bad/no_text.wav": "missing_transcript",
        "bad/twin.wav": "ambiguous_audio",
        "bad/no_audio.txt": "missing_audio",
        "bad/dangling.wav": "unreadable_transcript",
    }
    by_source = {rejection["source"]: rejection["detail"] for rejection in manifest["rejected"]}
    assert by_source["bad/long.wav"] == "31.00 s > --max-seconds 30"
    assert by_source["bad/short.wav"] == "0.100 s < --min-seconds 0.2"
    assert "file header" in by_source["bad/very_long.flac"]
    assert "latin1.txt" in by_source["bad/latin1.wav"]

    counts = manifest["counts"]
    assert counts["found"] == 3 + 13 and counts["kept"] == 4 and counts["rejected"] == 12
    assert counts["kept"] + counts["rejected"] == counts["found"]
    assert counts["rejected_by_reason"]["too_long"] == 2 and sum(counts["rejected_by_reason"].values()) == 12
    written = [
        json.loads(sample["json"])["source"]
        for split in SPLITS
        for sample in read_split(tmp_path / "out", manifest, split)
    ]
    assert sorted(written) == ["bad/twin.flac", "spk0/utt000.wav", "spk1/utt001.wav", "spk2/utt002.wav"]


def test_sample_members_hold_16k_mono_pcm16_the_stripped_text_and_metadata(tmp_path):
    root = tmp_path / "corpus"
    write_tone(root / "speaker-a" / "utt 001.é.wav", seconds=1.0, sample_rate=44_100, channels=2)
    write_text(root / "speaker-a" / "utt 001.é.txt", "\ufeff  C’hoant am eus da gomz brezhoneg!\n\n")
    manifest = run(root, tmp_path / "out", val_fraction=0.0, test_fraction=0.0)

    (sample,) = read_split(tmp_path / "out", manifest, "train")
    assert sample["__key__"] == "speaker-a__utt_001_e"
    assert set(sample) >= {"flac", "txt", "json"} and "wav" not in sample
    info = sf.info(io.BytesIO(sample["flac"]))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16_000, 1, "PCM_16", "FLAC")
    assert sample["txt"].decode("utf-8") == "C’hoant am eus da gomz brezhoneg!"
    assert json.loads(sample["json"]) == {
        "duration": 1.0,
        "source": "speaker-a/utt 001.é.wav",
        "sample_rate_in": 44_100,
    }
    assert manifest["sample_rate"] == 16_000 and manifest["audio_format"] == "flac"


@pytest.mark.parametrize("sample_rate, channels", [(44_100, 1), (48_000, 2), (22_050, 2), (16_000, 2), (8_000, 1)])
def test_any_rate_and_stereo_become_16k_mono_with_the_same_duration_and_pitch(tmp_path, sample_rate, channels):
    root = tmp_path / "corpus"
    write_tone(root / "a.wav", seconds=1.234, sample_rate=sample_rate, channels=channels, frequency=1000.0)
    write_text(root / "a.txt", "Demat")
    manifest = run(root, tmp_path / "out", val_fraction=0.0, test_fraction=0.0)

    (sample,) = read_split(tmp_path / "out", manifest, "train")
    audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
    assert rate == 16_000 and audio.ndim == 1
    assert abs(len(audio) / 16_000 - 1.234) < 0.005
    assert abs(json.loads(sample["json"])["duration"] - 1.234) < 0.005
    assert json.loads(sample["json"])["sample_rate_in"] == sample_rate
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 1000.0) < 2.0


def test_wav_audio_format_writes_wav_members(tmp_path):
    write_pairs(tmp_path / "corpus", 2)
    manifest = run(tmp_path / "corpus", tmp_path / "out", audio_format="wav", val_fraction=0.0, test_fraction=0.0)
    samples = read_split(tmp_path / "out", manifest, "train")
    assert len(samples) == 2 and all("wav" in s and "flac" not in s for s in samples)
    info = sf.info(io.BytesIO(samples[0]["wav"]))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16_000, 1, "PCM_16", "WAV")
    assert manifest["audio_format"] == "wav"


# --- shards and the manifest -----------------------------------------------------------------------------


def test_samples_per_shard_gives_several_shards_per_split_readable_by_webdataset_and_tarfile(tmp_path):
    write_pairs(tmp_path / "corpus", 30, seconds=0.25)
    output = tmp_path / "out"
    manifest = run(tmp_path / "corpus", output, samples_per_shard=2, val_fraction=0.3, test_fraction=0.3)

    assert sorted(path.name for path in output.iterdir()) == [MANIFEST, "test", "train", "validation"]
    total = 0
    for split in SPLITS:
        summary = manifest["splits"][split]
        assert len(summary["shards"]) >= 2
        assert [shard["file"] for shard in summary["shards"]] == [
            f"{split}/shard-{i:06d}.tar" for i in range(len(summary["shards"]))
        ]
        assert sorted(p.name for p in (output / split).iterdir()) == [
            Path(shard["file"]).name for shard in summary["shards"]
        ]
        for shard in summary["shards"]:
            path = output / shard["file"]
            assert shard["bytes"] == path.stat().st_size and 1 <= shard["samples"] <= 2
            names = tar_members(path)
            keys = sorted({name.split(".")[0] for name in names})
            assert len(keys) == shard["samples"] and all(re.fullmatch(r"[A-Za-z0-9_-]+", key) for key in keys)
            assert sorted(names) == sorted(f"{key}.{ext}" for key in keys for ext in ("flac", "json", "txt"))
        samples = read_split(output, manifest, split)
        assert len(samples) == summary["samples"] == sum(shard["samples"] for shard in summary["shards"])
        clips = [clip for shard in summary["shards"] for clip in shard["clips"]]  # what plans a packed epoch
        assert [key for key, _, _ in clips] == [sample["__key__"] for sample in samples]
        assert [seconds for _, seconds, _ in clips] == [
            round(json.loads(sample["json"])["duration"], 3) for sample in samples
        ]
        assert [size for _, _, size in clips] == [len(sample["txt"]) for sample in samples]
        seconds = sum(json.loads(sample["json"])["duration"] for sample in samples)
        assert summary["seconds"] == pytest.approx(seconds, abs=0.01)
        assert summary["hours"] == pytest.approx(seconds / 3600, abs=1e-5)
        total += len(samples)
    assert total == manifest["counts"]["kept"] == 30
    assert read_manifest(output) == manifest


def test_max_shard_bytes_starts_a_new_shard_before_the_limit(tmp_path):
    write_pairs(tmp_path / "corpus", 8, seconds=0.5)
    manifest = run(
        tmp_path / "corpus",
        tmp_path / "out",
        max_shard_bytes=60_000,
        audio_format="wav",  # ~17 kB a sample
        val_fraction=0.0,
        test_fraction=0.0,
    )
    shards = manifest["splits"]["train"]["shards"]
    assert [shard["samples"] for shard in shards] == [2, 2, 2, 2]
    assert all(shard["bytes"] <= 60_000 for shard in shards)


def test_manifest_layout(tmp_path):
    write_pairs(tmp_path / "corpus", 4)
    write_text(tmp_path / "corpus" / "lonely.txt", "Demat")
    manifest = run(tmp_path / "corpus", tmp_path / "out", seed=3)
    assert list(manifest) == [
        "tool",
        "version",
        "created",
        "source",
        "sample_rate",
        "audio_format",
        "options",
        "splits",
        "overlap",
        "rejected",
        "counts",
        "run",
    ]
    assert manifest["tool"] == "wdsbr shard_corpus"
    assert manifest["source"] == {"kind": "folder", "path": str((tmp_path / "corpus").resolve())}
    assert manifest["options"]["seed"] == 3 and manifest["options"]["max_seconds"] == 30.0
    assert list(manifest["splits"]) == list(SPLITS)
    assert manifest["rejected"] == [
        {
            "source": "lonely.txt",
            "reason": "missing_audio",
            "detail": "no .wav/.flac/.mp3/.ogg file named 'lonely' beside it",
        }
    ]
    assert manifest["counts"] == {"found": 5, "kept": 4, "rejected": 1, "rejected_by_reason": {"missing_audio": 1}}
    for split in SPLITS:
        assert set(manifest["splits"][split]) == {"shards", "samples", "seconds", "hours", "speakers"}


# --- determinism and splits ------------------------------------------------------------------------------


def test_output_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    write_pairs(tmp_path / "corpus", 24, sample_rate=22_050)
    write_text(tmp_path / "corpus" / "junk.wav", b"not audio")
    write_text(tmp_path / "corpus" / "junk.txt", "Demat")
    one = run(
        tmp_path / "corpus", tmp_path / "one", samples_per_shard=3, val_fraction=0.25, test_fraction=0.25, workers=1
    )
    two = run(
        tmp_path / "corpus", tmp_path / "two", samples_per_shard=3, val_fraction=0.25, test_fraction=0.25, workers=2
    )
    assert two["run"]["workers"] == 2
    assert json.dumps(one["splits"]) == json.dumps(two["splits"])
    assert one["rejected"] == two["rejected"] and one["counts"] == two["counts"]
    for split in SPLITS:
        for shard in one["splits"][split]["shards"]:
            assert (tmp_path / "one" / shard["file"]).read_bytes() == (tmp_path / "two" / shard["file"]).read_bytes()


def test_seed_changes_the_order_within_splits_but_not_their_content(tmp_path):
    write_pairs(tmp_path / "corpus", 20)
    a = run(tmp_path / "corpus", tmp_path / "a", seed=0, val_fraction=0.0, test_fraction=0.0)
    b = run(tmp_path / "corpus", tmp_path / "b", seed=1, val_fraction=0.0, test_fraction=0.0)
    keys_a = [s["__key__"] for s in read_split(tmp_path / "a", a, "train")]
    keys_b = [s["__key__"] for s in read_split(tmp_path / "b", b, "train")]
    assert sorted(keys_a) == sorted(keys_b) and keys_a != keys_b


def test_speakers_never_cross_splits(tmp_path):
    root = tmp_path / "data"
    lines = ["path\ttext\tspeaker"]
    for speaker in range(12):
        for utt in range(3):
            write_tone(root / f"s{speaker}_{utt}.wav", seconds=0.3)
            lines.append(f"s{speaker}_{utt}.wav\tDemat {utt}\tspeaker{speaker}")
    write_text(root / "all.tsv", "\n".join(lines) + "\n")
    manifest = run(root / "all.tsv", tmp_path / "out", val_fraction=0.3, test_fraction=0.3)

    speakers_of = {}
    for split in SPLITS:
        for sample in read_split(tmp_path / "out", manifest, split):
            speakers_of.setdefault(json.loads(sample["json"])["speaker"], set()).add(split)
    assert len(speakers_of) == 12 and all(len(splits) == 1 for splits in speakers_of.values())
    assert {split for splits in speakers_of.values() for split in splits} == set(SPLITS)
    assert sum(manifest["splits"][split]["speakers"] for split in SPLITS) == 12
    assert manifest["source"]["kind"] == "tsv"


# --- other sources ---------------------------------------------------------------------------------------


def test_common_voice_release_keeps_its_splits_and_metadata(tmp_path):
    root = tmp_path / "br"
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    layout = {"train.tsv": ["c1", "c2", "c3"], "dev.tsv": ["c4"], "test.tsv": ["c5", "gone"]}
    for tsv, clips in layout.items():
        rows = "".join(
            f"spk-{clip}\tcommon_voice_br_{clip}.mp3\tDemat {clip}!\t3\t0\tthirties\t\tKerne\tbr\t\n" for clip in clips
        )
        write_text(root / tsv, header + rows)
        for clip in clips:
            if clip != "gone":
                write_tone(root / "clips" / f"common_voice_br_{clip}.mp3", seconds=0.8, sample_rate=48_000, fmt="MP3")
    output = tmp_path / "out"
    manifest = run(root, output, samples_per_shard=2)

    assert manifest["source"]["kind"] == "common_voice"
    assert [manifest["splits"][split]["samples"] for split in SPLITS] == [3, 1, 1]
    assert manifest["rejected"] == [
        {
            "source": "clips/common_voice_br_gone.mp3",
            "reason": "missing_file",
            "detail": "test.tsv line 3: clips/common_voice_br_gone.mp3 does not exist",
        }
    ]
    (sample,) = read_split(output, manifest, "validation")
    assert sample["__key__"] == "common_voice_br_c4" and sample["txt"] == b"Demat c4!"
    metadata = json.loads(sample["json"])
    assert metadata["speaker"] == "spk-c4" and metadata["sample_rate_in"] == 48_000
    assert metadata["source"] == "clips/common_voice_br_c4.mp3"
    assert {metadata[k] for k in ("up_votes", "age", "accents", "locale")} == {"3", "thirties", "Kerne", "br"}
    assert abs(metadata["duration"] - 0.8) < 0.01
    assert "gender" not in metadata  # empty columns are left out


@pytest.fixture()
def offline_hf(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return datasets


def test_hf_dataset_is_decoded_by_us_and_keeps_its_splits(offline_hf, tmp_path):
    folder = tmp_path / "hfds"
    (folder / "data").mkdir(parents=True)
    for split, names in {"train": ["a", "b", "c"], "validation": ["d"], "test": ["e"]}.items():
        audio = []
        for name in names:
            buffer = io.BytesIO()
            sf.write(buffer, np.full(int(0.6 * 48_000), 0.1, np.float32), 48_000, format="FLAC")
            audio.append({"bytes": buffer.getvalue(), "path": f"clips/{name}.flac"})
        offline_hf.Dataset.from_dict(
            {"audio": audio, "sentence": [f"Demat {n}" for n in names], "client_id": [f"spk-{n}" for n in names]}
        ).cast_column("audio", offline_hf.Audio()).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    corpus = open_hf_corpus(str(folder), token="hf_do_not_leak")
    manifest = shard_corpus(corpus, tmp_path / "out", ShardOptions(workers=2, samples_per_shard=2), progress=False)

    assert [manifest["splits"][split]["samples"] for split in SPLITS] == [3, 1, 1]
    assert len(manifest["splits"]["train"]["shards"]) == 2
    (sample,) = read_split(tmp_path / "out", manifest, "test")
    metadata = json.loads(sample["json"])
    assert sample["__key__"] == "e" and sample["txt"] == b"Demat e"
    assert metadata == {
        "duration": 0.6,
        "source": f"{folder}:test:0",
        "speaker": "spk-e",
        "sample_rate_in": 48_000,
        "hf_audio_path": "clips/e.flac",
    }
    assert manifest["source"]["kind"] == "hf" and manifest["source"]["name"] == str(folder)
    assert "hf_do_not_leak" not in (tmp_path / "out" / MANIFEST).read_text()


# --- the run as a whole ----------------------------------------------------------------------------------


def test_non_empty_output_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    write_pairs(tmp_path / "corpus", 3)
    output = tmp_path / "out"
    run(tmp_path / "corpus", output, val_fraction=0.0, test_fraction=0.0, samples_per_shard=1)
    assert len(list((output / "train").iterdir())) == 3
    with pytest.raises(ShardError, match="not empty.*--overwrite"):
        run(tmp_path / "corpus", output)
    write_text(output / "notes.md", "mine")
    manifest = shard_corpus(
        open_corpus(tmp_path / "corpus"),
        output,
        ShardOptions(workers=1, val_fraction=0.0, test_fraction=0.0),
        overwrite=True,
        progress=False,
    )
    assert [p.name for p in (output / "train").iterdir()] == ["shard-000000.tar"]  # old shards 1 and 2 are gone
    assert (output / "notes.md").read_text() == "mine" and manifest["counts"]["kept"] == 3


def test_an_output_that_would_replace_the_source_is_refused(tmp_path):
    write_pairs(tmp_path / "out" / "train", 2)
    with pytest.raises(ShardError, match="source"):
        shard_corpus(
            open_corpus(tmp_path / "out" / "train"),
            tmp_path / "out",
            ShardOptions(workers=1),
            overwrite=True,
            progress=False,
        )
    assert len(list((tmp_path / "out" / "train").rglob("*.wav"))) == 2


def test_a_source_without_inputs_is_an_error_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="no inputs found"):
        run(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_that_keeps_nothing_is_an_error_but_its_manifest_says_why(tmp_path):
    write_tone(tmp_path / "corpus" / "a.wav", seconds=0.05)
    write_text(tmp_path / "corpus" / "a.txt", "Demat")
    with pytest.raises(ShardError, match="nothing kept: all 1 inputs were rejected \\(too_short 1\\)"):
        run(tmp_path / "corpus", tmp_path / "out")
    assert read_manifest(tmp_path / "out")["rejected"][0]["reason"] == "too_short"


def test_check_options_reports_every_problem_at_once():
    problems = check_options(
        ShardOptions(val_fraction=0.6, test_fraction=0.5, samples_per_shard=0, min_seconds=5, max_seconds=1)
    )
    assert len(problems) == 3
    assert any("--val-fraction + --test-fraction" in p for p in problems)
    assert any("--samples-per-shard 0" in p for p in problems)
    assert any("--min-seconds" in p for p in problems)
    assert check_options(ShardOptions()) == []


def test_ordered_map_keeps_input_order_and_reads_only_a_bounded_window_ahead():
    consumed = []

    def numbers():
        for number in range(-40, 0):
            consumed.append(number)
            yield number

    results = ordered_map(abs, numbers(), workers=2, chunk_size=3)
    assert next(results) == 40
    assert len(consumed) <= 2 * 2 * 3 + 3  # 2 × workers chunks in flight, not the whole input
    assert list(results) == list(range(39, 0, -1))

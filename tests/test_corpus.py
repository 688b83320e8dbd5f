"""wdsbr.corpus: finding inputs, pairing, keys, splits and the rejections made before any audio is decoded."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wdsbr.corpus import (
    MAX_KEY_CHARS,
    CorpusError,
    Item,
    Rejection,
    assign_split,
    claim_key,
    detect_kind,
    hash_split,
    make_key,
    open_corpus,
    open_hf_corpus,
    read_transcript,
)

KEY_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def write_tone(
    path: Path, seconds: float = 0.5, sample_rate: int = 16_000, channels: int = 1, fmt: str | None = None
) -> Path:
    """A 440 Hz tone; the format follows the extension unless `fmt` says otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    sf.write(path, np.stack([tone] * channels, axis=1) if channels > 1 else tone, sample_rate, format=fmt)
    return path


def write_text(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def split_entries(entries):
    items = [entry for entry in entries if isinstance(entry, Item)]
    rejections = {entry.source: entry for entry in entries if isinstance(entry, Rejection)}
    return items, rejections


# --- keys and splits ------------------------------------------------------------------------------------


def test_make_key_sanitises_a_relative_path():
    assert make_key("speaker-a/utt 001.é") == "speaker-a__utt_001_e"
    assert make_key("Brezhoneg/Kemper/c'hoant") == "Brezhoneg__Kemper__c_hoant"
    assert make_key("a\\b") == "a__b"


def test_make_key_caps_length_with_a_hash_and_never_returns_an_empty_key():
    long_name = "x" * 200
    key = make_key(long_name)
    assert len(key) <= MAX_KEY_CHARS
    assert key.endswith(hashlib.sha1(long_name.encode()).hexdigest()[:8])
    assert KEY_CHARS.fullmatch(make_key("..."))
    assert make_key("...")


def test_claim_key_keeps_the_first_and_suffixes_collisions_with_sha1_of_the_source():
    taken: dict[str, str] = {}
    assert claim_key("a_b", "a b.wav", taken) == "a_b"
    assert claim_key("a_b", "a b.wav", taken) is None  # the same source twice: a duplicate
    assert claim_key("a_b", "a_b.wav", taken) == "a_b-" + hashlib.sha1(b"a_b.wav").hexdigest()[:8]
    assert claim_key("a_b", "a_b.wav", taken) is None


def test_hash_split_follows_the_documented_formula():
    for name in ["spk1", "spk2", "utt_3", "é"]:
        h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32
        expected = "test" if h < 0.1 else "validation" if h < 0.3 else "train"
        assert hash_split(name, val_fraction=0.2, test_fraction=0.1) == expected
    assert {hash_split(f"k{i}", 0.0, 0.0) for i in range(50)} == {"train"}


def test_assign_split_prefers_the_given_split_then_the_speaker_then_the_key():
    given = Item(key="k", source="s", audio="a", split="test", speaker="spk")
    assert assign_split(given, 0.05, 0.05) == "test"
    by_speaker = Item(key="k", source="s", audio="a", speaker="spk")
    assert assign_split(by_speaker, 0.3, 0.3) == hash_split("spk", 0.3, 0.3)
    by_key = Item(key="k", source="s", audio="a")
    assert assign_split(by_key, 0.3, 0.3) == hash_split("k", 0.3, 0.3)


# --- transcripts -----------------------------------------------------------------------------------------


def test_read_transcript_strips_whitespace_and_a_bom_and_keeps_the_text_as_given(tmp_path):
    path = write_text(tmp_path / "a.txt", "\ufeff  C’hoant am eus!\n")
    assert read_transcript(Item(key="a", source="a.wav", audio="a.wav", text_path=str(path))) == "C’hoant am eus!"
    assert read_transcript(Item(key="a", source="a.wav", audio="a.wav", text=" Demat ")) == "Demat"


def test_read_transcript_rejects_empty_and_non_utf8_text(tmp_path):
    empty = write_text(tmp_path / "e.txt", " \n\t")
    latin = write_text(tmp_path / "l.txt", "Demat é".encode("latin-1"))
    rejection = read_transcript(Item(key="e", source="e.wav", audio="e.wav", text_path=str(empty)))
    assert (rejection.source, rejection.reason) == ("e.wav", "empty_transcript")
    rejection = read_transcript(Item(key="l", source="l.wav", audio="l.wav", text_path=str(latin)))
    assert (rejection.source, rejection.reason) == ("l.wav", "text_not_utf8")
    assert "l.txt" in rejection.detail
    assert read_transcript(Item(key="n", source="n", audio="n", text=None)).reason == "missing_transcript"


# --- detecting the source kind ---------------------------------------------------------------------------


def test_detect_kind(tmp_path):
    write_text(tmp_path / "list.tsv", "a.wav\tdemat\n")
    (tmp_path / "cv" / "clips").mkdir(parents=True)
    write_text(tmp_path / "cv" / "train.tsv", "client_id\tpath\tsentence\n")
    (tmp_path / "plain").mkdir()
    assert detect_kind(tmp_path / "list.tsv") == "tsv"
    assert detect_kind(tmp_path / "cv") == "common_voice"
    assert detect_kind(tmp_path / "plain") == "folder"
    with pytest.raises(CorpusError, match="no-such-corpus"):
        detect_kind(tmp_path / "no-such-corpus")
    with pytest.raises(CorpusError, match="not a .tsv"):
        detect_kind(write_text(tmp_path / "notes.md", "hi"))


# --- folder corpus ---------------------------------------------------------------------------------------


def test_folder_pairs_audio_and_text_at_any_depth_in_every_format(tmp_path):
    root = tmp_path / "corpus"
    for relative, fmt in [("a.wav", None), ("spk1/b.flac", None), ("spk1/deep/er/c.ogg", "OGG"), ("spk2/d.mp3", "MP3")]:
        write_tone(root / relative, fmt=fmt)
        write_text((root / relative).with_suffix(".txt"), f"text of {relative}")
    write_text(root / ".hidden" / "x.txt", "not an input")
    write_tone(root / "._a.wav")  # macOS resource fork: hidden, not an input
    write_text(root / "notes.md", "not an input either")

    corpus = open_corpus(root)
    items, rejections = split_entries(corpus.entries)
    assert (
        corpus.kind == "folder"
        and corpus.total == 4
        and corpus.description == {"kind": "folder", "path": str(root.resolve())}
    )
    assert rejections == {}
    assert sorted((item.key, item.source) for item in items) == [
        ("a", "a.wav"),
        ("spk1__b", "spk1/b.flac"),
        ("spk1__deep__er__c", "spk1/deep/er/c.ogg"),
        ("spk2__d", "spk2/d.mp3"),
    ]
    for item in items:
        assert item.split is None and item.speaker is None
        assert Path(item.audio).is_file() and Path(item.text_path).read_text() == f"text of {item.source}"


def test_folder_listing_rejects_unpaired_and_ambiguous_files(tmp_path):
    root = tmp_path / "corpus"
    write_text(root / "only_text.txt", "no audio for me")
    write_tone(root / "only_audio.wav")
    for name in ["twin.wav", "twin.flac", "twin.mp3"]:
        write_tone(root / name, fmt="MP3" if name.endswith("mp3") else None)
    write_text(root / "twin.txt", "two audio files")
    write_tone(root / "case.wav")
    write_text(root / "case.TXT", "upper")
    write_text(root / "case.txt", "lower")

    items, rejections = split_entries(open_corpus(root).entries)
    assert [(item.key, item.source) for item in items] == [
        ("case", "case.wav"),
        ("twin", "twin.flac"),
    ]  # flac > wav > ogg > mp3
    assert Path(items[0].text_path).name == "case.TXT"  # the first in sorted order
    assert {source: rejection.reason for source, rejection in rejections.items()} == {
        "case.txt": "ambiguous_transcript",
        "only_text.txt": "missing_audio",
        "only_audio.wav": "missing_transcript",
        "twin.wav": "ambiguous_audio",
        "twin.mp3": "ambiguous_audio",
    }
    assert "twin.flac is used" in rejections["twin.wav"].detail


def test_folder_keys_are_unique_after_sanitising(tmp_path):
    root = tmp_path / "corpus"
    for name in ["a b.wav", "a_b.wav", "speaker-a/utt 001.é.wav"]:
        write_tone(root / name)
        write_text((root / name).with_suffix(".txt"), "x")
    keys = {item.source: item.key for item in split_entries(open_corpus(root).entries)[0]}
    assert keys["a b.wav"] == "a_b"
    assert keys["a_b.wav"] == "a_b-" + hashlib.sha1(b"a_b.wav").hexdigest()[:8]
    assert keys["speaker-a/utt 001.é.wav"] == "speaker-a__utt_001_e"
    assert all(KEY_CHARS.fullmatch(key) for key in keys.values())


def test_folder_with_split_folders_keeps_them_and_rejects_files_outside(tmp_path):
    root = tmp_path / "corpus"
    for relative in ["train/spk/a.wav", "dev/b.wav", "test/c.wav", "stray/d.wav", "e.wav"]:
        write_tone(root / relative)
        write_text((root / relative).with_suffix(".txt"), "x")
    items, rejections = split_entries(open_corpus(root).entries)
    assert {item.source: item.split for item in items} == {
        "train/spk/a.wav": "train",
        "dev/b.wav": "validation",
        "test/c.wav": "test",
    }
    assert {source: rejection.reason for source, rejection in rejections.items()} == {
        "stray/d.wav": "outside_splits",
        "e.wav": "outside_splits",
    }


def test_speaker_from_folder_names_the_speaker_by_the_first_sub_folder(tmp_path):
    root = tmp_path / "corpus"
    for relative in ["anna/day-1/a.wav", "anna/b.wav", "yann/c.wav", "loose.wav"]:
        write_tone(root / relative)
        write_text((root / relative).with_suffix(".txt"), "x")
    items, _ = split_entries(open_corpus(root, speaker_from_folder=True).entries)
    assert {item.source: item.speaker for item in items} == {
        "anna/day-1/a.wav": "anna",
        "anna/b.wav": "anna",
        "yann/c.wav": "yann",
        "loose.wav": None,
    }
    assert all(item.speaker is None for item in split_entries(open_corpus(root).entries)[0])


def test_speaker_from_folder_looks_below_split_folders(tmp_path):
    root = tmp_path / "corpus"
    for relative in ["train/anna/a.wav", "test/yann/b.wav"]:
        write_tone(root / relative)
        write_text((root / relative).with_suffix(".txt"), "x")
    items, _ = split_entries(open_corpus(root, speaker_from_folder=True).entries)
    assert {item.source: (item.split, item.speaker) for item in items} == {
        "train/anna/a.wav": ("train", "anna"),
        "test/yann/b.wav": ("test", "yann"),
    }


def test_folder_listing_skips_the_output_folder_inside_the_corpus(tmp_path):
    root = tmp_path / "corpus"
    write_tone(root / "a.wav")
    write_text(root / "a.txt", "x")
    write_text(root / "shards" / "stray.txt", "left over")
    entries = open_corpus(root, exclude=root / "shards").entries
    assert [entry.source for entry in entries] == ["a.wav"]


# --- Common Voice and TSV ---------------------------------------------------------------------------------


def write_common_voice(root: Path) -> None:
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    rows = {
        "train.tsv": [("spk1", "common_voice_br_1.mp3", "Demat deoc'h."), ("spk2", "common_voice_br_2.mp3", "Kenavo!")],
        "dev.tsv": [("spk3", "common_voice_br_3.mp3", '"Ya," emezañ.')],
        "test.tsv": [("spk4", "common_voice_br_4.mp3", "Trugarez."), ("spk4", "common_voice_br_missing.mp3", "Gwall.")],
    }
    for tsv, lines in rows.items():
        body = "".join(
            f"{client}\t{clip}\t{text}\t2\t0\t\tmale_masculine\tKerne\tbr\t\n" for client, clip, text in lines
        )
        write_text(root / tsv, header + body)
        for _, clip, _ in lines:
            if "missing" not in clip:
                write_tone(root / "clips" / clip, seconds=0.6, sample_rate=48_000, fmt="MP3")
    write_text(root / "validated.tsv", header)  # other Common Voice TSVs are not splits


def test_common_voice_keeps_its_splits_with_client_id_as_speaker(tmp_path):
    root = tmp_path / "br"
    write_common_voice(root)
    corpus = open_corpus(root)
    items, rejections = split_entries(corpus.entries)
    assert corpus.kind == "common_voice"
    assert {item.key: (item.split, item.speaker, item.text) for item in items} == {
        "common_voice_br_1": ("train", "spk1", "Demat deoc'h."),
        "common_voice_br_2": ("train", "spk2", "Kenavo!"),
        "common_voice_br_3": ("validation", "spk3", '"Ya," emezañ.'),
        "common_voice_br_4": ("test", "spk4", "Trugarez."),
    }
    item = next(item for item in items if item.key == "common_voice_br_1")
    assert item.source == "clips/common_voice_br_1.mp3"
    assert item.meta == {
        "up_votes": "2",
        "down_votes": "0",
        "gender": "male_masculine",
        "accents": "Kerne",
        "locale": "br",
    }
    assert rejections["clips/common_voice_br_missing.mp3"].reason == "missing_file"


def test_tsv_manifest_paths_relative_and_absolute_with_rejections(tmp_path):
    root = tmp_path / "data"
    write_tone(root / "wav" / "a.wav")
    write_tone(root / "wav" / "b.wav")
    outside = write_tone(tmp_path / "elsewhere" / "c.wav")
    lines = [
        b"path\ttext",
        b"wav/a.wav\tDemat",
        f"{outside}\tKenavo".encode(),
        b"wav/b.wav",  # no transcript
        b"wav/missing.wav\tGwall",
        b"wav/a.wav\tDemat adarre",  # listed twice
        "wav/b.wav\tDemat é".encode("latin-1"),
        b"",
    ]
    tsv = write_text(root / "list.tsv", b"\n".join(lines))
    corpus = open_corpus(tsv)
    items, rejections = split_entries(corpus.entries)
    assert corpus.kind == "tsv" and corpus.total == 6
    assert [(item.key, item.source, item.text, item.split) for item in items] == [
        ("wav__a", "wav/a.wav", "Demat", None),
        (make_key(str(outside.with_suffix("")).lstrip("/")), str(outside), "Kenavo", None),
    ]
    reasons = sorted(
        (rejection.source, rejection.reason) for rejection in corpus.entries if isinstance(rejection, Rejection)
    )
    assert reasons == [
        ("wav/a.wav", "duplicate_key"),
        ("wav/b.wav", "missing_transcript"),
        ("wav/b.wav", "text_not_utf8"),
        ("wav/missing.wav", "missing_file"),
    ]
    assert "line 5" in rejections["wav/missing.wav"].detail


def test_tsv_header_may_name_a_speaker_and_more_columns(tmp_path):
    write_tone(tmp_path / "a.wav")
    tsv = write_text(tmp_path / "list.tsv", "path\ttext\tspeaker\tdialect\na.wav\tDemat\tyann\tleon\n")
    (item,) = open_corpus(tsv).entries
    assert (item.speaker, item.meta, item.text) == ("yann", {"dialect": "leon"}, "Demat")


# --- Hugging Face ----------------------------------------------------------------------------------------


@pytest.fixture()
def offline_hf(monkeypatch, tmp_path):
    """datasets with no network and a private cache."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return datasets


def wav_bytes(seconds: float, sample_rate: int) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(
        buffer, 0.2 * np.sin(np.arange(int(seconds * sample_rate)) / 5).astype(np.float32), sample_rate, format="WAV"
    )
    return buffer.getvalue()


def write_hf_parquet(datasets, folder: Path) -> Path:
    """A local dataset with train and test splits, as the hub lays parquet out: data/SPLIT-*.parquet."""
    (folder / "data").mkdir(parents=True)
    for split, rows in {"train": ["tr0", "tr1"], "test": ["te0"]}.items():
        table = datasets.Dataset.from_dict(
            {
                "audio": [
                    {"bytes": wav_bytes(0.5 + i * 0.1, 22_050), "path": f"{name}.wav"} for i, name in enumerate(rows)
                ],
                "sentence": [f"Demat {name}" for name in rows],
                "client_id": [f"spk-{name}" for name in rows],
                "up_votes": [i for i, _ in enumerate(rows)],
            }
        ).cast_column("audio", datasets.Audio())
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_hf_local_dataset_streams_items_with_given_splits_and_speakers(offline_hf, tmp_path):
    folder = write_hf_parquet(offline_hf, tmp_path / "hfds")
    corpus = open_hf_corpus(str(folder), token="hf_secret_token")
    assert corpus.kind == "hf" and not corpus.listed
    assert "hf_secret_token" not in repr(corpus.description)
    entries = list(corpus.entries)
    assert all(isinstance(entry, Item) for entry in entries)
    assert [(e.key, e.split, e.speaker, e.text, e.source) for e in entries] == [
        ("tr0", "train", "spk-tr0", "Demat tr0", f"{folder}:train:0"),
        ("tr1", "train", "spk-tr1", "Demat tr1", f"{folder}:train:1"),
        ("te0", "test", "spk-te0", "Demat te0", f"{folder}:test:0"),
    ]
    assert isinstance(entries[0].audio, bytes) and entries[1].meta == {"up_votes": 1, "hf_audio_path": "tr1.wav"}


def test_hf_split_names_and_columns_are_checked_before_streaming(offline_hf, tmp_path):
    folder = str(write_hf_parquet(offline_hf, tmp_path / "hfds"))
    with pytest.raises(CorpusError, match="'other'"):
        open_hf_corpus(folder, splits=["other"])
    with pytest.raises(CorpusError, match="'validation'"):
        open_hf_corpus(folder, splits=["validation"])
    with pytest.raises(CorpusError, match="no column 'transcript'"):
        open_hf_corpus(folder, text_column="transcript")
    with pytest.raises(CorpusError, match="cannot open Hugging Face dataset"):
        open_hf_corpus(str(tmp_path / "nowhere"), token="hf_secret_token")
    corpus = open_hf_corpus(folder, splits=["test"])
    assert [entry.split for entry in corpus.entries] == ["test"]


def test_hf_dataset_saved_to_disk_is_read_too(offline_hf, tmp_path):
    data = offline_hf.Dataset.from_dict(
        {"audio": [{"bytes": wav_bytes(0.5, 16_000), "path": "x.wav"}], "text": ["Demat"]}
    ).cast_column("audio", offline_hf.Audio())
    offline_hf.DatasetDict({"validation": data}).save_to_disk(str(tmp_path / "saved"))
    (item,) = open_hf_corpus(str(tmp_path / "saved"), text_column="text").entries
    assert (item.key, item.split, item.text, item.speaker) == ("x", "validation", "Demat", None)

"""wdsbr.ali and the `ali` corpus source: anaouder's .ali alignments of long recordings, read as anaouder reads
them (its `load_ali_file` is the oracle), each sentence cut out of its recording into a shard sample."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import speech_like

from wdsbr.ali import parse_ali, read_segment
from wdsbr.audio import SAMPLE_RATE, decode_audio
from wdsbr.corpus import CorpusError, Item, Rejection, open_corpus
from wdsbr.shards import ShardOptions, shard_corpus

REPO = Path(__file__).resolve().parents[1]

# Every feature of the format: header metadata, comments, blank lines, speaker and gender carried on, `spk`,
# a bare {Name}, all-capitals names kept, {?} unknown words kept in the text, an unknown key ignored, the
# deprecated "name:f" speaker form, the no-lm/add-lm parser switch, "#" inside a line (not a comment).
ALI = """\
# Interview, aligned with anaouder
{audio-path: audio/interview.wav}
{source: Radio Kreiz Breizh}
{author: Gweltaz, Yann Gwilhou}
{tags: kelaouennoù, istor}
{licence: CC-BY-SA 4.0}

{speaker: Yann Gwilhou; gender: m}
Demat deoc'h. {start: 0.52; end: 2.9}
Ha c'hwi ? {spk: Anna; start: 3.1; end: 4.25}
Mat-tre, trugarez ! {start: 4.3; end: 5}
{Per}
Un dra bennak {?} a lavaran. {start: 6; end: 7.5}
{speaker: GWENN; gender: f; accent: Kerne}
Setu ! {start: 7.6; end: 8.0}
{unknown-key: x} Kenavo {start: 8.1; end: 9.2}
An div linenn-mañ {start: 9.5;end:10.25} # not a comment
{parser: no-lm}
Ur frazenn hep LM. {start: 10.5; end: 11}
{parser: add-lm}
Hini all. {start: 11.1; end: 12}
{lenaig:f} Ha me ivez. {start: 13.1; end: 14}
"""
SENTENCES = [  # (text, start, end, speaker, gender)
    ("Demat deoc'h.", 0.52, 2.9, "yann_gwilhou", "m"),
    ("Ha c'hwi ?", 3.1, 4.25, "anna", "m"),
    ("Mat-tre, trugarez !", 4.3, 5.0, "anna", "m"),
    ("Un dra bennak {?} a lavaran.", 6.0, 7.5, "per", "m"),
    ("Setu !", 7.6, 8.0, "GWENN", "f"),
    ("Kenavo", 8.1, 9.2, "GWENN", "f"),
    ("An div linenn-mañ  # not a comment", 9.5, 10.25, "GWENN", "f"),
    ("Ur frazenn hep LM.", 10.5, 11.0, "GWENN", "f"),
    ("Hini all.", 11.1, 12.0, "GWENN", "f"),
    ("Ha me ivez.", 13.1, 14.0, "lenaig", "f"),
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_recording(path: Path, seconds: float, sample_rate: int, fmt: str | None = None, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = speech_like(seconds, sample_rate, seed=seed)
    sf.write(path, audio, sample_rate, format=fmt)
    return audio


# --- the format -------------------------------------------------------------------------------------------


def test_parse_ali_reads_sentences_segments_speakers_and_header(tmp_path):
    ali = parse_ali(write(tmp_path / "interview.ali", ALI))
    assert ali.audio_path == tmp_path / "audio" / "interview.wav"
    assert [(s.text, s.start, s.end, s.metadata["speaker"], s.metadata["gender"]) for s in ali.sentences] == SENTENCES
    assert [s.line for s in ali.sentences][:3] == [9, 10, 11]
    assert ali.header == {
        "audio-path": "audio/interview.wav",
        "source": "Radio Kreiz Breizh",
        "author": ["Gweltaz", "Yann_Gwilhou"],
        "tags": ["kelaouennoù", "istor"],
        "licence": "CC-BY-SA 4.0",
        "parser": "add-lm",
    }
    assert ali.sentences[3].metadata["unknown"] == [3]  # the {?} is the 4th word
    assert ali.sentences[7].metadata["parser"] == ["no-lm"] and "parser" not in ali.sentences[8].metadata
    assert ali.problems == []


def test_parse_ali_matches_anaouders_own_reader(tmp_path, capsys):
    """anaouder.asr.dataset.load_ali_file is the oracle: same sentences, segments, speakers, metadata, audio."""
    pytest.importorskip("pydub", reason="the oracle module imports pydub")
    pytest.importorskip("pytz", reason="the oracle module imports pytz")
    oracle = pytest.importorskip(
        "anaouder.asr.dataset", reason="pip install -e '.[breton,breton-test]' && pip install --no-deps anaouder==1.0.5"
    )
    for name, text in (
        ("interview.ali", ALI),
        ("plain.ali", "Demat. {start: 0; end: 1.5}\n\nKenavo {start: 2; end: 3.25}\n"),
    ):
        path = write(tmp_path / name, text)
        expected = oracle.load_ali_file(str(path))
        ali = parse_ali(path)
        assert [s.text for s in ali.sentences] == expected["sentences"]
        assert [[s.start, s.end] for s in ali.sentences] == expected["segments"]
        assert [s.metadata for s in ali.sentences] == expected["metadata"]
        assert ali.header == expected["header"]
        if expected["audio_path"] is not None:
            assert ali.audio_path == Path(expected["audio_path"]).absolute()
    capsys.readouterr()  # the oracle prints its warnings in colour


def test_recording_without_audio_path_is_the_file_beside_it_with_an_audio_extension(tmp_path):
    write(tmp_path / "talk.ali", "Demat. {start: 0; end: 1}\n")
    assert parse_ali(tmp_path / "talk.ali").audio_path is None
    write_recording(tmp_path / "talk.mp3", 2.0, 16_000)
    assert parse_ali(tmp_path / "talk.ali").audio_path == tmp_path / "talk.mp3"
    write_recording(tmp_path / "talk.wav", 2.0, 16_000)  # wav before mp3, as anaouder looks
    assert parse_ali(tmp_path / "talk.ali").audio_path == tmp_path / "talk.wav"


def test_lines_anaouder_would_crash_on_or_skip_are_named_as_problems(tmp_path):
    ali = parse_ali(write(tmp_path / "bad.ali", "Demat. {start: 0,5; end: 1}\nKenavo.\nMat. {start: 1; end: 2}\n"))
    assert [s.text for s in ali.sentences] == ["Mat."]
    assert ali.problems == [(1, "start '0,5' is not a number of seconds"), (2, "a sentence without {start: …; end: …}")]


# --- cutting segments -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, sample_rate", [("WAV", 16_000), ("FLAC", 44_100), ("MP3", 48_000)])
def test_read_segment_equals_the_same_slice_of_the_whole_decoded_recording(tmp_path, fmt, sample_rate):
    """Only the segment is decoded (a seek); for mp3 from 1 s before it, since libmpg123 decodes the first frames
    after a bare seek without their bit reservoir."""
    path = tmp_path / f"long.{fmt.lower()}"
    write_recording(path, 40.0, sample_rate, fmt=fmt, seed=3)
    whole, rate = decode_audio(path)
    for start, end in ((0.0, 1.3), (12.345, 14.0), (31.2, 39.99)):
        segment, segment_rate, seconds = read_segment(path, start, end)
        first, last = round(start * rate), round(end * rate)
        assert segment_rate == rate == sample_rate and seconds == pytest.approx(len(whole) / rate)
        np.testing.assert_allclose(segment, whole[first:last], atol=1e-6)


def test_read_segment_refuses_a_segment_past_the_end_but_forgives_rounding(tmp_path):
    from wdsbr.ali import SegmentPastEnd

    path = tmp_path / "short.wav"
    write_recording(path, 2.0, 16_000)
    assert len(read_segment(path, 1.5, 2.004)[0]) == 8000  # within 10 ms: cut at the end
    with pytest.raises(SegmentPastEnd, match=r"segment 1.5-2.5 s ends past the recording's end \(2.000 s\)"):
        read_segment(path, 1.5, 2.5)


# --- as a corpus, into shards -------------------------------------------------------------------------------


def write_ali_corpus(root: Path) -> np.ndarray:
    """interview.ali (16 kHz wav, 40 s) with 6 good sentences and one of each rejection; radio.ali beside a 48 kHz
    mp3 with no audio-path and no speaker; lost.ali whose recording is missing; one ordinary pair."""
    recording = write_recording(root / "audio" / "interview.wav", 40.0, 16_000, seed=1)
    write(
        root / "interview.ali",
        ALI.replace(
            "Hini all. {start: 11.1; end: 12}",
            "Hini all. {start: 11.1; end: 12}\n"
            "Re hir. {start: 2; end: 33}\n"  # 31 s > 30 s
            "{start: 20; end: 21}\n"  # no text
            "Gin. {start: 22; end: 21}\n"  # end before start
            "Re bell. {start: 39.5; end: 41}\n"  # past the 40 s recording
            "Ne ra netra. {start: x; end: 23}",
        ),
    )  # unreadable start
    write_recording(root / "radio" / "radio.mp3", 6.0, 48_000, fmt="MP3", seed=2)
    write(
        root / "radio" / "radio.ali",
        "# no header\nKelou ar vro. {start: 0.5; end: 2.5}\nHag an amzer. {start: 3; end: 5.25}\n",
    )
    write(root / "lost.ali", "{audio-path: nowhere.mp3}\nDemat. {start: 0; end: 1}\n")
    write_recording(root / "pairs" / "utt1.wav", 1.0, 16_000, seed=4)
    write(root / "pairs" / "utt1.txt", "Demat dit.")
    return recording


def test_an_ali_folder_is_detected_and_every_sentence_is_an_item_or_a_rejection(tmp_path):
    root = tmp_path / "corpus"
    write_ali_corpus(root)
    corpus = open_corpus(root)
    assert corpus.kind == "ali" and corpus.description == {
        "kind": "ali",
        "path": str(root.resolve()),
        "ali_files": 3,
        "recordings": 2,
    }
    items = {entry.source: entry for entry in corpus.entries if isinstance(entry, Item)}
    rejections = {entry.source: entry.reason for entry in corpus.entries if isinstance(entry, Rejection)}
    assert rejections == {
        "interview.ali:23": "empty_transcript",
        "interview.ali:24": "empty_segment",
        "interview.ali:26": "bad_alignment",
        "lost.ali:2": "missing_audio",
    }
    first = items["interview.ali:9"]
    assert first.key == "interview__00000520-00002900" and first.segment == (0.52, 2.9)
    assert first.speaker == "yann_gwilhou" and first.text == "Demat deoc'h." and first.split is None
    assert first.meta == {
        "source": "Radio Kreiz Breizh",
        "author": ["Gweltaz", "Yann_Gwilhou"],
        "tags": ["kelaouennoù", "istor"],
        "licence": "CC-BY-SA 4.0",
        "recording": "audio/interview.wav",
        "start": 0.52,
        "end": 2.9,
        "gender": "m",
    }
    radio = items["radio/radio.ali:2"]
    assert radio.speaker is None and radio.split_group == "radio/radio.mp3"  # one recording, one split
    assert items["pairs/utt1.wav"].segment is None  # the ordinary pair beside them
    # the recordings themselves are not inputs (they have no .txt, and are not "missing_transcript")
    assert not any(source.startswith(("audio/", "radio/radio.mp3")) for source in {*items, *rejections})
    assert len(items) + len(rejections) == corpus.total == 12 + 2 + 1 + 4


def test_ali_folder_into_shards_cuts_each_segment_keeps_speaker_source_and_times(tmp_path):
    root = tmp_path / "corpus"
    recording = write_ali_corpus(root)
    manifest = shard_corpus(
        open_corpus(root),
        tmp_path / "shards",
        ShardOptions(val_fraction=0, test_fraction=0, workers=2, samples_per_shard=4),
        progress=False,
    )
    counts = manifest["counts"]
    assert counts["rejected_by_reason"] == {
        "bad_alignment": 1,
        "beyond_recording_end": 1,
        "empty_segment": 1,
        "empty_transcript": 1,
        "missing_audio": 1,
        "too_long": 1,
    }
    assert counts["kept"] == 10 + 2 + 1 and counts["kept"] + counts["rejected"] == counts["found"]
    reasons = {row["source"]: row for row in manifest["rejected"]}
    assert reasons["interview.ali:22"]["detail"] == "segment 2-33 s is 31.00 s > --max-seconds 30"
    assert reasons["interview.ali:25"]["reason"] == "beyond_recording_end"
    assert reasons["interview.ali:26"]["detail"] == "interview.ali line 26: start 'x' is not a number of seconds"

    import webdataset as wds

    shards = [str(tmp_path / "shards" / shard["file"]) for shard in manifest["splits"]["train"]["shards"]]
    samples = {sample["__key__"]: sample for sample in wds.WebDataset(shards, shardshuffle=False)}
    sample = samples["interview__00006000-00007500"]
    metadata = json.loads(sample["json"])
    assert sample["txt"].decode() == "Un dra bennak {?} a lavaran."  # as written; {?} is the transcriber's mark
    assert metadata["speaker"] == "per" and metadata["source"] == "interview.ali:13"
    assert (metadata["recording"], metadata["start"], metadata["end"]) == ("audio/interview.wav", 6.0, 7.5)
    assert metadata["duration"] == pytest.approx(1.5) and metadata["sample_rate_in"] == 16_000
    audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_allclose(audio, recording[6 * 16_000 : int(7.5 * 16_000)], atol=1 / 32768 + 1e-7)  # PCM-16

    radio = json.loads(samples["radio__radio__00003000-00005250"]["json"])  # a 48 kHz mp3, resampled
    assert radio["duration"] == pytest.approx(2.25, abs=1e-3) and radio["sample_rate_in"] == 48_000
    assert "speaker" not in radio and radio["source"] == "radio/radio.ali:3"


def test_unknown_speakers_of_one_recording_stay_in_one_split(tmp_path):
    root = tmp_path / "corpus"
    write_recording(root / "long.wav", 30.0, 16_000)
    write(root / "long.ali", "".join(f"Frazenn {i}. {{start: {i}; end: {i + 0.8}}}\n" for i in range(25)))
    manifest = shard_corpus(
        open_corpus(root),
        tmp_path / "shards",
        ShardOptions(val_fraction=0.3, test_fraction=0.3, workers=1),
        progress=False,
    )
    assert sorted(summary["samples"] for summary in manifest["splits"].values()) == [0, 0, 25]


def test_ali_flag_on_a_folder_without_ali_files_is_an_error(tmp_path):
    write(tmp_path / "plain" / "a.txt", "Demat")
    with pytest.raises(CorpusError, match="--ali: .* is not a folder of .ali alignments"):
        open_corpus(tmp_path / "plain", ali=True)


def test_shard_tool_reads_an_ali_folder(tmp_path):
    root = tmp_path / "corpus"
    write_ali_corpus(root)
    result = subprocess.run(
        [
            sys.executable,
            "tools/shard_corpus.py",
            str(root),
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--no-progress",
            "--val-fraction",
            "0",
            "--test-fraction",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "kept 13 of 19 inputs; rejected 6" in result.stdout


def test_ali_windows_group_a_recordings_sentences_with_their_times_and_the_text_before_them(tmp_path):
    root = tmp_path / "corpus"
    write_recording(root / "long.wav", 30.0, 16_000)
    lines = [f"Frazenn {i}. {{start: {i}; end: {i + 0.8}}}\n" for i in range(25)]
    lines.insert(13, "Unan all. {start: 12.5; end: 12.95}\n")  # overlaps sentence 12: a new window starts with it
    write(root / "long.ali", "".join(lines))
    items = [entry for entry in open_corpus(root, ali_windows=10.0).entries if isinstance(entry, Item)]
    assert [(item.segment, item.source) for item in items] == [
        ((0.0, 9.8), "long.ali:1-10"),
        ((10.0, 12.8), "long.ali:11-13"),
        ((12.5, 21.8), "long.ali:14-23"),
        ((22.0, 24.8), "long.ali:24-26"),
    ]
    first, second = items[0], items[1]
    assert first.text == " ".join(f"Frazenn {i}." for i in range(10)) and "previous_text" not in first.meta
    assert second.meta["segments"] == [[0.0, 0.8, "Frazenn 10."], [1.0, 1.8, "Frazenn 11."], [2.0, 2.8, "Frazenn 12."]]
    assert second.meta["previous_text"] == first.text and (second.meta["start"], second.meta["end"]) == (10.0, 12.8)
    assert items[2].meta["segments"][:2] == [[0.0, 0.45, "Unan all."], [0.5, 1.3, "Frazenn 13."]]
    sentences = [entry for entry in open_corpus(root).entries if isinstance(entry, Item)]  # one input a sentence
    assert (
        len(sentences) == 26
        and sentences[1].meta["previous_text"] == "Frazenn 0."
        and "segments" not in sentences[1].meta
    )
    with pytest.raises(CorpusError, match=r"--ali-windows: .* \(no .ali file in it\)"):
        write(tmp_path / "pairs" / "a.txt", "a")
        open_corpus(tmp_path / "pairs", ali_windows=10.0)


def test_ali_windows_train_with_timestamps_where_the_sentences_lie(tmp_path, tiny_processor):
    from wdsbr.data import LoaderOptions, make_train_loader
    from wdsbr.timestamps import TIME_PRECISION, timestamp_begin

    root = tmp_path / "corpus"
    write_recording(root / "long.wav", 30.0, 16_000)
    write(
        root / "long.ali",
        "".join(f"Frazenn {i}. {{start: {1.5 * i + 0.21}; end: {1.5 * i + 1.2}}}\n" for i in range(12)),
    )
    shard_corpus(
        open_corpus(root, ali_windows=10.0),
        tmp_path / "shards",
        ShardOptions(val_fraction=0, test_fraction=0, max_seconds=10.0, workers=1),
        progress=False,
    )
    tokenizer = tiny_processor.tokenizer
    loader = make_train_loader(
        str(tmp_path / "shards" / "train"),
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=80,
            micro_batch_size=1,
            num_workers=0,
            timestamps=1.0,
            speed_perturb="0.5",
        ),
    )  # twice as long
    begin = timestamp_begin(tokenizer)
    stamps = {
        batch["keys"][0]: [round((t - begin) * TIME_PRECISION, 2) for t in batch["labels"][0].tolist() if t >= begin]
        for batch in loader
    }
    assert stamps["long__00000210-00010200"] == [round(2 * x, 2) for i in range(7) for x in (1.5 * i, 1.5 * i + 0.99)]

"""Long recordings (wdsbr.longform, launch/evaluate.py --long-form): read whole, never rejected as too long,
transcribed by transformers' sequential long-form generate() with timestamps, scored per recording, subtitles
written, and split exactly across ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import free_port, json_line, run_evaluate, speech_like

from wdsbr.evaluation import generate_kwargs
from wdsbr.longform import TEMPERATURE_FALLBACK, list_recordings, my_share, run_long_form, subtitles
from wdsbr.model import load_model, load_processor

DEEPSPEED = Path(sys.executable).parent / "deepspeed"
FAST = ["--precision", "fp32", "--generation-max-length", "8", "--language", "br"]
SECONDS = [70.0, 12.0, 41.0]  # two recordings past Whisper's 30 s window


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("long") / "recordings"
    (folder / "show").mkdir(parents=True)
    for i, seconds in enumerate(SECONDS):
        where = folder / "show" if i == 2 else folder
        sf.write(where / f"rec{i}.wav", speech_like(seconds, seed=i), 16_000)
        (where / f"rec{i}.txt").write_text(f"demat deoc'h\nkenavo ar wech all {i}\n", encoding="utf-8")
    sf.write(folder / "untranscribed.wav", speech_like(2.0), 16_000)
    (folder / "empty.wav").write_bytes((folder / "rec1.wav").read_bytes())
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    return folder


evaluate = run_evaluate


@pytest.fixture(scope="module")
def one_rank(wordy_whisper, recordings, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    tsv = tmp_path_factory.mktemp("out") / "long.tsv"
    result = evaluate("--model", wordy_whisper, "--data", recordings, "--long-form", "--output", tsv, *FAST)
    return result, json_line(result), tsv


# ------------------------------------------------------------------------------------------- the recordings


def test_recordings_are_pairs_of_any_length_and_the_rest_is_named(recordings):
    found, rejected = list_recordings(recordings)
    assert [r.key for r in found] == ["rec0", "rec1", "show/rec2"]
    assert found[0].text == "demat deoc'h kenavo ar wech all 0"  # lines joined, whitespace collapsed
    assert sorted((Path(row["source"]).name, row["reason"]) for row in rejected) == [
        ("empty.txt", "empty_transcript"),
        ("untranscribed.wav", "missing_transcript"),
    ]


def test_an_ali_file_is_one_recording_with_its_segment_texts_joined(tmp_path):
    sf.write(tmp_path / "radio.wav", speech_like(40.0), 16_000)
    (tmp_path / "radio.ali").write_text(
        "# an interview\n{source: Radio Kerne}\nDemat deoc'h. {start: 0.5; end: 2.9}\n"
        "Ha c'hwi ? {spk: Anna; start: 31.0; end: 33.2}\n",
        encoding="utf-8",
    )
    (tmp_path / "lost.ali").write_text("Kenavo. {start: 1; end: 2}\n", encoding="utf-8")
    found, rejected = list_recordings(tmp_path)
    assert [(r.key, r.audio_path.name, r.text) for r in found] == [("radio", "radio.wav", "Demat deoc'h. Ha c'hwi ?")]
    assert [(Path(row["source"]).name, row["reason"]) for row in rejected] == [("lost.ali", "missing_audio")]


def test_a_folder_without_recordings_is_one_line(tmp_path):
    (tmp_path / "a.txt").write_text("no audio", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="no recording to transcribe"):
        list_recordings(tmp_path)
    with pytest.raises(FileNotFoundError, match="needs a folder"):
        list_recordings(tmp_path / "a.txt")


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_ranks_share_the_recordings_exactly(recordings, world_size):
    found, _ = list_recordings(recordings)
    shares = [my_share(found, rank, world_size) for rank in range(world_size)]
    assert sorted(r.key for share in shares for r in share) == [r.key for r in found]


def test_subtitles_srt_and_vtt():
    segments = [
        {"start": 0.0, "end": 2.4, "text": "demat"},
        {"start": 2.4, "end": 2.4, "text": ""},
        {"start": 3661.5, "end": 3662.02, "text": "kenavo"},
    ]
    assert subtitles(segments, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,400\ndemat\n\n2\n01:01:01,500 --> 01:01:02,020\nkenavo\n"
    )
    assert subtitles(segments, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.400\ndemat\n\n01:01:01.500 --> 01:01:02.020\nkenavo\n"
    )


def test_long_form_decoding_moves_the_window_through_the_whole_recording(wordy_whisper, recordings):
    """The 70 s recording is decoded window after window: its segments are ordered, inside the recording, on the
    0.02 s grid, and reach past the first 30 s."""
    processor, model = load_processor(wordy_whisper, "br"), load_model(wordy_whisper).eval()
    found, _ = list_recordings(recordings)
    predictions, transcripts, unreadable = run_long_form(
        model, processor, found[:1], generate_kwargs("br", 1, 8), torch.float32, torch.device("cpu")
    )
    assert not unreadable and transcripts[0].audio_seconds == pytest.approx(70.0)
    segments = transcripts[0].segments
    assert segments and predictions[0].prediction == transcripts[0].text
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and all(s["start"] <= s["end"] <= 70.0 + 0.02 for s in segments)
    assert all(abs(x * 50 - round(x * 50)) < 1e-6 for s in segments for x in (s["start"], s["end"]))
    assert segments[-1]["end"] > 30.0


def test_temperature_fallback_resamples_looping_windows_the_same_way_every_time(tiny_whisper, recordings):
    """The random model loops ("de ar" again and again), so its windows compress too well: with the fallback they
    are decoded again, sampled, which changes the text; the sampling is seeded by the recording, not by the
    caller's random state, and the caller's random state (a trainer's) is left as it was. (The wordy model
    suppresses timestamps, which leaves nothing to sample from in long-form decoding.)"""
    processor, model = load_processor(tiny_whisper, "br"), load_model(tiny_whisper).eval()
    found, _ = list_recordings(recordings)
    greedy = generate_kwargs("br", 1, 24)

    def decode(gen_kwargs, caller_seed):
        torch.manual_seed(caller_seed)
        predictions, _, _ = run_long_form(model, processor, found[:1], gen_kwargs, torch.float32, torch.device("cpu"))
        return [p.prediction for p in predictions], torch.rand(1).item()

    plain, plain_next = decode(greedy, 0)
    fallback, fallback_next = decode({**greedy, **TEMPERATURE_FALLBACK}, 0)
    again, again_next = decode({**greedy, **TEMPERATURE_FALLBACK}, 1)
    assert fallback != plain
    assert again == fallback
    torch.manual_seed(0)
    assert plain_next == fallback_next == torch.rand(1).item() and again_next != fallback_next


# ---------------------------------------------------------------------------------------------- the CLI


def test_evaluate_long_form_scores_every_recording_and_writes_subtitles(one_rank):
    result, row, tsv = one_rank
    assert row["samples"] == 3 and row["loss"] is None and row["rejected_inputs"] == 2
    assert row["audio_hours"] == pytest.approx(sum(SECONDS) / 3600, abs=1e-5)
    assert "too_long" not in result.stderr and "rejected 2 inputs" in result.stderr
    assert row["wer"] > 0
    rows = tsv.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 3
    written = sorted(str(p.relative_to(tsv.with_suffix(""))) for p in tsv.with_suffix("").rglob("*.srt"))
    assert written == ["rec0.srt", "rec1.srt", "show/rec2.srt"]
    assert "-->" in (tsv.with_suffix("") / "rec0.srt").read_text(encoding="utf-8")


def test_two_ranks_give_the_same_numbers_as_one(one_rank, wordy_whisper, recordings, tmp_path):
    tsv = tmp_path / "two.tsv"
    result = evaluate(
        "--model",
        wordy_whisper,
        "--data",
        recordings,
        "--long-form",
        "--output",
        tsv,
        "--subtitles",
        "vtt",
        *FAST,
        launcher=[str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port())],
    )
    two = json_line(result)
    one = one_rank[1]
    assert two["world_size"] == 2 and two["samples"] == one["samples"] == 3
    assert (two["wer"], two["cer"], two["audio_hours"]) == (one["wer"], one["cer"], one["audio_hours"])
    assert sorted(tsv.read_text(encoding="utf-8").splitlines()) == sorted(
        one_rank[2].read_text(encoding="utf-8").splitlines()
    )
    assert len(list(tsv.with_suffix("").rglob("*.vtt"))) == 3


def test_temperature_fallback_is_only_for_long_form(wordy_whisper, recordings):
    result = evaluate("--model", wordy_whisper, "--data", recordings, "--temperature-fallback", *FAST)
    assert result.returncode != 0
    assert "--temperature-fallback: only with --long-form" in result.stderr and "Traceback" not in result.stderr


def test_long_form_on_a_missing_folder_is_one_line(wordy_whisper, tmp_path):
    result = evaluate("--model", wordy_whisper, "--data", tmp_path / "nowhere", "--long-form", *FAST)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--long-form needs a folder" in result.stderr and "Traceback" not in result.stderr


def test_conditioned_windows_fit_whisper_s_448_positions_when_the_text_before_them_is_long(wordy_whisper, tmp_path):
    """A window prompted with the text before it holds up to 227 prompt tokens (<|startofprev|>, 223 previous, 3
    start tokens): asking for 224 new tokens made generate() refuse the second window of a 70 s recording (exit 2,
    seen on tiny.en whose text had looped). The new tokens are now capped to fit, and the cap is said."""
    folder = tmp_path / "one"
    folder.mkdir()
    sf.write(folder / "rec0.wav", speech_like(70.0, seed=0), 16_000)
    (folder / "rec0.txt").write_text("demat deoc'h\n", encoding="utf-8")
    result = evaluate(
        "--model",
        wordy_whisper,
        "--data",
        folder,
        "--long-form",
        "--condition-on-previous",
        "--output",
        tmp_path / "s.tsv",
        "--precision",
        "fp32",
        "--generation-max-length",
        "224",
        "--language",
        "br",
    )
    assert result.returncode == 0, result.stderr[-800:]
    assert "--condition-on-previous: at most 220 new tokens per window, not 224" in result.stderr
    assert json_line(result)["samples"] == 1


def test_conditioning_on_the_previous_text_changes_what_later_windows_decode(
    one_rank, wordy_whisper, recordings, tmp_path
):
    tsv = tmp_path / "conditioned.tsv"
    row = json_line(
        evaluate(
            "--model",
            wordy_whisper,
            "--data",
            recordings,
            "--long-form",
            "--output",
            tsv,
            "--condition-on-previous",
            *FAST,
        )
    )
    assert row["condition_on_previous"] is True and one_rank[1]["condition_on_previous"] is False

    def predictions(path):
        return {line.split("\t")[0]: line for line in path.read_text(encoding="utf-8").splitlines()[1:]}

    conditioned, plain = predictions(tsv), predictions(one_rank[2])
    assert conditioned["rec1"] == plain["rec1"]  # one window: nothing before it
    assert conditioned["rec0"] != plain["rec0"]  # 70 s: windows 2 and 3 are prompted with what came before
    refused = evaluate("--model", wordy_whisper, "--data", recordings, "--condition-on-previous", *FAST)
    assert refused.returncode == 2 and "--condition-on-previous: only with --long-form" in refused.stderr


def test_an_n_gram_lm_fuses_into_long_form_decoding_too(wordy_whisper, recordings, tmp_path):
    """--lm on --long-form: each window's text (after its <|startoftranscript|>) is scored; at α = β = 0 the
    transcript and its segments are plain decoding's, at α = 1 the LM moves them and the windows still go on
    through the 70 s recording."""
    pytest.importorskip("kenlm")
    from wdsbr.lm import LMFusion, estimate, load_lm
    from wdsbr.text import clean_text

    processor, model = load_processor(wordy_whisper, "br"), load_model(wordy_whisper).eval()
    found, _ = list_recordings(recordings)
    estimate([["demat", "deoc'h"], ["kenavo", "ar", "wech", "all"]] * 3, 3).write(tmp_path / "lm.arpa")
    lm = load_lm(tmp_path / "lm.arpa")

    def decode(alpha: float | None):
        kwargs = generate_kwargs("br", 1, 8)  # greedy: transformers' long-form beam search fails on this tiny model
        if alpha is not None:
            kwargs["logits_processor"] = [LMFusion(lm, processor.tokenizer, clean_text, alpha, 0.0, num_beams=1)]
        _, transcripts, _ = run_long_form(model, processor, found[:1], kwargs, torch.float32, torch.device("cpu"))
        return transcripts[0], kwargs.get("logits_processor", [None])[0]

    plain, _ = decode(None)
    nil, fusion = decode(0.0)
    assert (nil.text, nil.segments) == (plain.text, plain.segments) and fusion.words_scored > 0
    fused, _ = decode(1.0)
    assert fused.text != plain.text and fused.segments[-1]["end"] > 30.0

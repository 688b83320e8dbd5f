"""Long recordings (`launch/evaluate.py --long-form`): read each recording whole, transcribe it with Whisper's
sequential long-form decoding, score it with the short clips' scorer and write its subtitles.

A recording is `ID.wav` (any audio `wdsbr.audio` reads) + `ID.txt` of any length, or an anaouder `.ali` file read
as one recording: its audio (`{audio-path: …}` or the file of the same stem) and its segment texts joined in
order. Nothing is cut to 30 s and nothing is rejected as too long.

Decoding is transformers' own long-form `generate()`: log-mel features of the whole recording (no truncation),
`return_timestamps=True`, so the model predicts timestamp tokens and the 30 s window moves to the last one it
predicted; greedy or `--num-beams`, as validation decodes short clips; previous-text conditioning
(`condition_on_prev_tokens`) and Whisper's temperature fallback (`TEMPERATURE_FALLBACK`: a window whose tokens
compress too well, i.e. loop, or whose mean log-probability is too low is decoded again, sampled at the next
temperature) only when the caller asks for them, in the generate arguments. `--generation-max-length` bounds the
new tokens of each 30 s window. The recording's audio and features are held once (about 350 MB for an hour at 80
mels), the model sees one window at a time.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wdsbr.ali import parse_ali
from wdsbr.audio import AUDIO_EXTENSIONS, SAMPLE_RATE, AudioError, load_audio
from wdsbr.scoring import Prediction


@dataclass
class Recording:
    key: str  # the file stem, relative to the folder ("sub/ID")
    audio_path: Path
    text: str  # the whole reference transcript
    source: str  # the file the text came from


@dataclass
class Transcript:
    key: str
    text: str
    segments: list[dict[str, Any]] = field(default_factory=list)  # {"start": s, "end": s, "text": …}
    audio_seconds: float = 0.0
    seconds: float = 0.0  # wall time of its decoding


def list_recordings(folder: str | Path) -> tuple[list[Recording], list[dict[str, str]]]:
    """Every recording under `folder` (sorted by key) and the inputs that cannot be one, as rejection rows
    ({"source", "reason", "detail"}). A folder holding `.ali` files is read as alignments, otherwise as audio +
    `.txt` pairs. Raises FileNotFoundError when `folder` is not a folder or holds no recording at all."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: --long-form needs a folder of ID.wav + ID.txt recordings or .ali files")
    recordings, rejected = [], []
    alis = sorted(folder.rglob("*.ali"))
    if alis:
        for path in alis:
            try:
                ali = parse_ali(path)
            except (UnicodeDecodeError, OSError) as error:
                rejected.append({"source": str(path), "reason": "bad_alignment", "detail": str(error)})
                continue
            text = " ".join(s.text for s in ali.sentences if s.text)
            if ali.audio_path is None or not ali.audio_path.is_file():
                rejected.append(
                    {
                        "source": str(path),
                        "reason": "missing_audio",
                        "detail": f"no recording {ali.audio_path or path.with_suffix('.wav')}",
                    }
                )
            elif not text:
                rejected.append({"source": str(path), "reason": "empty_transcript", "detail": "no aligned sentence"})
            else:
                recordings.append(
                    Recording(str(path.relative_to(folder).with_suffix("")), ali.audio_path, text, str(path))
                )
    else:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
            transcript = path.with_suffix(".txt")
            text = transcript.read_text(encoding="utf-8").strip() if transcript.is_file() else None
            if text is None:
                rejected.append(
                    {"source": str(path), "reason": "missing_transcript", "detail": f"no {transcript.name} beside it"}
                )
            elif not text:
                rejected.append(
                    {"source": str(transcript), "reason": "empty_transcript", "detail": "the file is empty"}
                )
            else:
                recordings.append(
                    Recording(
                        str(path.relative_to(folder).with_suffix("")), path, " ".join(text.split()), str(transcript)
                    )
                )
    if not recordings:
        found = "; ".join(f"{row['source']}: {row['reason']}" for row in rejected[:3])
        raise FileNotFoundError(
            f"{folder}: no recording to transcribe ({found or 'no audio + .txt pairs, no .ali files'})"
        )
    return recordings, rejected


def my_share(recordings: list[Recording], rank: int, world_size: int) -> list[Recording]:
    """The recordings this rank transcribes: every world_size-th from `rank`, so the ranks cover each exactly once."""
    return recordings[rank::world_size]


def fit_after_previous_text(max_new_tokens: int, max_target_positions: int) -> int:
    """The new tokens a window may ask for when conditioned on the text before it. generate() prompts the window
    with <|startofprev|>, up to max_target_positions // 2 - 1 previous tokens and up to 4 start tokens, and
    refuses the window when prompt + max_new_tokens passes max_target_positions (seen: 227 + 224 > 448 once a
    recording's text had looped). 448 positions: 220."""
    return min(max_new_tokens, max_target_positions - (1 + max_target_positions // 2 - 1 + 4))


# Whisper's own long-form heuristics, as transformers' documentation gives them for generate(): the compression
# ratio is of the window's token ids (transformers' measure, so 1.35, not OpenAI's 2.4 on text bytes).
# no_speech_threshold is left out: it drops a window judged silent, a deletion the scorer would charge.
TEMPERATURE_FALLBACK: dict[str, Any] = {
    "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    "compression_ratio_threshold": 1.35,
    "logprob_threshold": -1.0,
}


def recording_seed(key: str) -> int:
    """The sampling seed of one recording under temperature fallback: its key's CRC-32, so a recording decodes
    the same whichever rank or position it has."""
    return zlib.crc32(key.encode("utf-8"))


@torch.no_grad()
def transcribe_long(
    model, feature_extractor, tokenizer, audio, gen_kwargs: dict[str, Any], dtype: torch.dtype, device: torch.device
) -> tuple[str, list[dict[str, Any]]]:
    """One recording (16 kHz mono float samples) → (text, timed segments) by sequential long-form generate()."""
    long = len(audio) > feature_extractor.n_samples
    inputs = feature_extractor(
        audio,
        sampling_rate=SAMPLE_RATE,
        return_tensors="pt",
        return_attention_mask=True,
        **({"truncation": False, "padding": "longest"} if long else {}),
    )
    features = inputs["input_features"].to(device, dtype)
    output = model.generate(
        features,
        attention_mask=inputs["attention_mask"].to(device),
        return_timestamps=True,
        return_segments=True,
        **gen_kwargs,
    )
    segments = []
    for segment in output["segments"][0]:
        text = tokenizer.decode(segment["tokens"], skip_special_tokens=True).strip()
        segments.append(
            {"start": round(float(segment["start"]), 2), "end": round(float(segment["end"]), 2), "text": text}
        )
    text = " ".join(tokenizer.decode(output["sequences"][0], skip_special_tokens=True).split())
    return text, segments


def run_long_form(
    model,
    processor,
    recordings: list[Recording],
    gen_kwargs: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device,
    on_done=None,
) -> tuple[list[Prediction], list[Transcript], list[dict[str, str]]]:
    """Transcribe `recordings` one by one: (predictions for the scorer, transcripts with segments, recordings that
    could not be decoded, as rejection rows). `on_done(transcript)` after each."""
    predictions, transcripts, rejected = [], [], []
    for recording in recordings:
        try:
            audio = load_audio(recording.audio_path)
        except (AudioError, OSError) as error:
            rejected.append({"source": str(recording.audio_path), "reason": "unreadable_audio", "detail": str(error)})
            continue
        start = time.perf_counter()
        # Only temperature fallback samples: seeded by the key, on a forked generator, so the trainer's own random
        # state (dropout, augmentation) is the same after a validation as without one.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(recording_seed(recording.key))
            text, segments = transcribe_long(
                model, processor.feature_extractor, processor.tokenizer, audio, gen_kwargs, dtype, device
            )
        transcript = Transcript(recording.key, text, segments, len(audio) / SAMPLE_RATE, time.perf_counter() - start)
        predictions.append(Prediction(recording.key, recording.text, text))
        transcripts.append(transcript)
        if on_done is not None:
            on_done(transcript)
    return predictions, transcripts, rejected


def _clock(seconds: float, separator: str) -> str:
    milliseconds = round(max(0.0, seconds) * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def subtitles(segments: list[dict[str, Any]], kind: str = "srt") -> str:
    """The segments as SubRip (`srt`) or WebVTT (`vtt`) text; segments without text are left out."""
    separator = "," if kind == "srt" else "."
    blocks = ["WEBVTT\n"] if kind == "vtt" else []
    for number, segment in enumerate((s for s in segments if s["text"]), start=1):
        timing = f"{_clock(segment['start'], separator)} --> {_clock(segment['end'], separator)}"
        blocks.append(f"{number}\n{timing}\n{segment['text']}\n" if kind == "srt" else f"{timing}\n{segment['text']}\n")
    return "\n".join(blocks)

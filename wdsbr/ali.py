"""Long recordings aligned with anaouder: the `.ali` format, and cutting one sentence's segment out of its recording.

An `.ali` file (anaouder, https://github.com/gweltou/vosk-br) is UTF-8 text beside a recording, one sentence a
line with its segment in seconds, metadata in braces, `#` comments:

    {audio-path: interview.mp3}
    {source: Radio Kreiz Breizh}
    {speaker: Yann Gwilhou; gender: m}
    Demat deoc'h. {start: 0.52; end: 2.9}
    Ha c'hwi ? {spk: Anna; start: 3.1; end: 4.25}
    Mat-tre. {start: 4.3; end: 5.0}

`speaker` (or `spk`, or a bare `{name}`) and `gender` carry on to later lines; a line without both `start` and
`end` is header metadata; `audio-path` is relative to the .ali file, and without it the recording is the file
with the same stem and an audio extension. `parse_ali` reads it the way `anaouder.asr.dataset.load_ali_file`
(1.0.5) does, line for line (a test holds it to that oracle), without importing anaouder, which would pull in
pydub and pytz. Where anaouder raises (a `start` that is not a number) or skips silently (a sentence line
without a segment), `parse_ali` names the line in `problems`.
`read_segment` decodes only one segment of a long recording.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from wdsbr.audio import AudioError, EmptyAudioError

# anaouder's find_associated_audiofile looks for these, in this order (flac added: libsndfile reads it)
RECORDING_EXTENSIONS = ("wav", "mp3", "m4a", "ogg", "mp4", "mkv", "flac")
# Metadata keys anaouder knows; any other "key: value" is ignored (or read as the deprecated "name:m" speaker form).
VALID_KEYS = {
    "source",
    "source-audio",
    "audio-source",
    "audio-path",
    "author",
    "authors",
    "licence",
    "modifications",
    "transcription",
    "tags",
    "parser",
    "speaker",
    "spk",
    "gender",
    "lang",
    "accent",
    "start",
    "end",
}
UNKNOWN = "unknown"  # anaouder's speaker and gender before any is given
_METADATA = re.compile(r"{\s*(.+?)\s*}")
_DEPRECATED_SPEAKER = re.compile(r"([-\'\w]+):*([mf])*")
# Lossy codecs need decoding from a little before a seek point: after a bare seek libmpg123 decodes the first
# frames without their bit reservoir (wrong samples). One second restores a full decode exactly (tested).
_EXACT_SEEK_FORMATS = {"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF"}
PREROLL_SECONDS = 1.0


@dataclass(frozen=True)
class AliSentence:
    """One aligned line: its text without metadata, its segment in seconds and its metadata (speaker, gender,
    and whatever else the line or the lines before it set)."""

    line: int  # 1-based line number in the .ali file
    text: str
    start: float
    end: float
    metadata: dict[str, Any]


@dataclass
class AliFile:
    """A parsed .ali: the recording it aligns (absolute, or None when there is none), header metadata, the
    aligned sentences, and (line, problem) for lines that could not be read."""

    path: Path
    audio_path: Path | None
    header: dict[str, Any] = field(default_factory=dict)
    sentences: list[AliSentence] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def extract_metadata(line: str) -> tuple[str, dict[str, Any], list[str]]:
    """(the line without its {…} groups, its metadata, problems): anaouder's `extract_metadata`.

    `{?}` (an unknown word) stays in the text and its word index is recorded under "unknown"; `speaker` values
    are lower-cased with spaces as "_" unless all capitals; `tags`, `author`, `accent` become lists; `start`,
    `end` become floats (a value that is not a number is a problem, and the key is left out).
    """
    metadata: dict[str, Any] = {}
    problems: list[str] = []
    remove: list[tuple[int, int]] = []
    for match in _METADATA.finditer(line):
        start, end = match.span()
        content = match.group(1).strip()
        if content == "?":
            metadata.setdefault("unknown", []).append(len(line[:end].split()) - 1)
            continue
        remove.append((start, end))
        for unit in content.split(";"):
            unit = unit.strip()
            if ":" not in unit:  # a bare speaker name
                metadata["speaker"] = unit if unit.isupper() else unit.replace(" ", "_").lower()
                continue
            key, value = (part.strip() for part in unit.split(":", maxsplit=1))
            if key in VALID_KEYS:
                if key in ("speaker", "spk"):
                    key = "speaker"
                    if not value.isupper():
                        value = value.replace(" ", "_").lower()
                if key in ("tags", "author", "accent"):
                    value = [v.strip().replace(" ", "_") for v in value.split(",") if v.strip()]
                if key in ("start", "end"):
                    try:
                        value = float(value)
                    except ValueError:
                        problems.append(f"{key} {value!r} is not a number of seconds")
                        continue
                metadata[key] = value
            elif deprecated := _DEPRECATED_SPEAKER.fullmatch(unit):  # "name:m", the old speaker form
                metadata["speaker"] = deprecated.group(1)
                if deprecated.group(2) in ("f", "m"):
                    metadata["gender"] = deprecated.group(2)
            # any other unknown key is ignored, as anaouder does (it prints "Wrong metadata")
    for start, end in reversed(remove):
        line = line[:start] + line[end:]
    return line.strip(), metadata, problems


def parse_ali(path: str | Path) -> AliFile:
    """Read an .ali file as anaouder's `load_ali_file` does. Raises UnicodeDecodeError (not UTF-8) or OSError."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    ali = AliFile(path=path, audio_path=None)
    speaker, gender, no_lm = UNKNOWN, UNKNOWN, False
    for number, raw in enumerate(io.StringIO(text, newline=None).readlines(), start=1):  # open()'s line splitting
        line = raw.strip()
        if line.startswith("#"):
            continue
        sentence, metadata, problems = extract_metadata(line)
        speaker = metadata.setdefault("speaker", speaker)
        gender = metadata.setdefault("gender", gender)
        if "parser" in metadata:
            if "no-lm" in metadata["parser"]:
                no_lm = True
            elif "add-lm" in metadata["parser"]:
                no_lm = False
        elif no_lm:
            metadata["parser"] = ["no-lm"]
        if "start" in metadata and "end" in metadata:
            ali.sentences.append(AliSentence(number, sentence.strip(), metadata["start"], metadata["end"], metadata))
        elif sentence and not problems:  # anaouder skips it silently; here it is named
            problems.append("a sentence without {start: …; end: …}")
        else:
            ali.header.update({k: v for k, v in metadata.items() if k not in ("speaker", "gender", "accent")})
        if problems:  # one entry per line: a line is one input
            ali.problems.append((number, "; ".join(problems)))
        if ali.audio_path is None and "audio-path" in metadata:
            ali.audio_path = Path(os.path.normpath(path.parent / metadata["audio-path"])).absolute()
    if ali.audio_path is None:
        for extension in RECORDING_EXTENSIONS:
            candidate = path.with_suffix(f".{extension}")
            if candidate.exists():
                ali.audio_path = candidate.absolute()
                break
    return ali


def read_segment(
    path: str | Path, start: float, end: float, *, tolerance_seconds: float = 0.01
) -> tuple[np.ndarray, int, float]:
    """Decode [start, end) seconds of a recording: (float32 mono samples, native rate, recording seconds).

    Only the segment is decoded (seek), so an hour-long recording costs what its sentence costs. An `end` up to
    `tolerance_seconds` past the recording's end is cut there (alignments are written to the millisecond);
    further is `SegmentPastEnd`. Raises `AudioError` when the file cannot be decoded.
    """
    try:
        with sf.SoundFile(str(path)) as audio:
            rate, frames = audio.samplerate, audio.frames
            first, last = int(round(start * rate)), int(round(end * rate))
            if last > frames + tolerance_seconds * rate:
                raise SegmentPastEnd(
                    f"segment {start:g}-{end:g} s ends past the recording's end ({frames / rate:.3f} s)"
                )
            last = min(last, frames)
            preroll = 0 if audio.format in _EXACT_SEEK_FORMATS else min(first, int(PREROLL_SECONDS * rate))
            audio.seek(first - preroll)
            samples = audio.read(last - first + preroll, dtype="float32", always_2d=True)[preroll:]
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"unreadable audio: {error}".rstrip(".")) from None
    if samples.shape[0] == 0:
        raise EmptyAudioError(f"segment {start:g}-{end:g} s has no samples")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate), frames / rate


class SegmentPastEnd(AudioError):
    """The segment ends after the recording does."""

"""What every source shares: the `Item` / `Rejection` / `Corpus` types, keys, splits, transcripts, file walking
and TSV reading.

Every input becomes exactly one `Item` or one `Rejection` (reason codes in `REASONS`), so a run can prove
kept + rejected == found. Keys are derived from the source's relative path (or id), sanitised to
`[A-Za-z0-9_-]`, at most `MAX_KEY_CHARS` long, and made unique in listing order (`make_key`, `claim_key`).
Problems with the corpus as a whole (missing, wrong columns) raise `CorpusError`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

SPLITS = ("train", "validation", "test")
# Split folder / TSV / HF split names -> our split names.
SPLIT_NAMES = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}
MAX_KEY_CHARS = 80  # keeps "KEY.flac" inside the 100-character USTAR member name

REASONS = {
    "missing_audio": "a transcript with no audio file beside it (or a row without an audio path)",
    "missing_transcript": "an audio file with no .txt beside it (or a row without a transcript)",
    "empty_transcript": "the transcript is empty after stripping whitespace",
    "text_not_utf8": "the transcript is not valid UTF-8",
    "unreadable_transcript": "the .txt file cannot be read",
    "unreadable_audio": "libsndfile cannot decode the audio",
    "empty_audio": "the audio has no samples (0 bytes, empty or truncated)",
    "too_short": "shorter than --min-seconds",
    "too_long": "longer than --max-seconds",
    "missing_file": "a TSV / Common Voice / HF row points to an audio file that does not exist",
    "ambiguous_audio": "another audio file with the same stem was preferred (flac > wav > ogg > mp3)",
    "ambiguous_transcript": "another .txt with the same stem (different case) was used",
    "duplicate_key": "the same input is listed twice",
    "outside_splits": "the corpus has split folders and this file is in none of them",
    "cv_speaker_in_dev_test": "--cv-train validated: the clip's speaker (client_id) is in dev.tsv or test.tsv",
    "cv_sentence_in_dev_test": "--cv-train validated: the clip's sentence is in dev.tsv or test.tsv "
    "(exact or after clean_text)",
    "leaked_sentence": "the transcript (normalised) is one of --exclude-sentences: a validation or test sentence",
    "bad_alignment": "an .ali line whose segment cannot be read, or a sentence without {start; end}",
    "empty_segment": "an .ali segment whose end is not after its start",
    "beyond_recording_end": "an .ali segment that ends after its recording does",
}


class CorpusError(ValueError):
    """The corpus as a whole cannot be used (does not exist, wrong layout or columns); the message says why."""


@dataclass(frozen=True)
class Item:
    """One input that may become a shard sample, before its audio is decoded."""

    key: str  # tar key: [A-Za-z0-9_-], unique in the run
    source: str  # relative path (or HF "name:split:index"), written to KEY.json and to rejections
    audio: str | bytes  # absolute path or encoded bytes
    text: str | None = None  # transcript when the source gives it inline (CV, TSV, HF)
    text_path: str | None = None  # .txt to read when it does not (folder)
    split: str | None = None  # given split; None means the hash split decides
    speaker: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # anything else the source gives, into KEY.json
    segment: tuple[float, float] | None = None  # (start, end) s inside `audio`, a long recording (.ali)
    split_group: str | None = None  # hashed for the split when the speaker is unknown (an .ali's recording)


@dataclass(frozen=True)
class Rejection:
    """An input that is not written, with a code from `REASONS` and a human-readable detail."""

    source: str
    reason: str
    detail: str


@dataclass
class Corpus:
    """An opened source: what it is (for the manifest) and its entries in a deterministic order."""

    kind: str  # folder | common_voice | tsv | ali | hf
    description: dict[str, Any]  # the manifest's "source" (never a token)
    entries: Iterable[Item | Rejection]
    total: int | None  # number of entries when known up front (not for a streamed HF dataset)
    listed: bool  # True: entries is a list and may be shuffled; False: a stream written in its own order


# ---------------------------------------------------------------------------------------------------------
# Keys and splits


def make_key(name: str) -> str:
    """A tar key from a relative path without extension (or an id): `speaker-a/utt 001.é` -> `speaker-a__utt_001_e`.

    Accents are folded to ASCII, "/" becomes "__", anything outside [A-Za-z0-9_-] becomes "_". A key longer
    than MAX_KEY_CHARS is cut and ends with 8 hex of sha1(name), so it stays unique.
    """
    text = unicodedata.normalize("NFKD", name.replace("\\", "/"))
    text = "".join(char for char in text if not unicodedata.combining(char))
    text = re.sub(r"[^A-Za-z0-9_-]", "_", text.strip("/").replace("/", "__"))
    if not text or len(text) > MAX_KEY_CHARS:
        text = f"{text[: MAX_KEY_CHARS - 9]}-{_sha1_hex(name)[:8]}".lstrip("-")
    return text


def claim_key(key: str, source: str, taken: dict[str, str]) -> str | None:
    """Reserve `key` for `source` in `taken` (key -> source); None when the same source is listed twice.

    On a collision with another source the key becomes `key-<8 hex of sha1(source)>`. The first claimant in
    listing order keeps the plain key, so keys only change when a colliding input is added before it.
    """
    if taken.get(key) == source:
        return None
    if key in taken:
        key = f"{key[: MAX_KEY_CHARS - 9]}-{_sha1_hex(source)[:8]}"
        if key in taken:
            return None
    taken[key] = source
    return key


def hash_split(name: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a key or speaker: h = first 32 bits of sha1 / 2**32; test, then validation, then train."""
    h = int(_sha1_hex(name)[:8], 16) / 2**32
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "validation"
    return "train"


def assign_split(item: Item, val_fraction: float, test_fraction: float) -> str:
    """The item's given split, else the hash split of its speaker (so no speaker is in two splits), else of its
    split group (all of a recording's unknown voices in one split), else of its key."""
    if item.split is not None:
        return item.split
    return hash_split(item.speaker or item.split_group or item.key, val_fraction, test_fraction)


def _sha1_hex(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Transcripts


def read_transcript(item: Item) -> str | Rejection:
    """The item's transcript, BOM removed and stripped, or the Rejection that says why it cannot be used."""
    text = item.text
    if item.text_path is not None:
        name = Path(item.text_path).name  # beside the audio named by item.source
        try:
            raw = Path(item.text_path).read_bytes()
        except OSError as error:
            return Rejection(item.source, "unreadable_transcript", f"{name}: {error.strerror or error}")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            return Rejection(
                item.source, "text_not_utf8", f"{name} is not valid UTF-8 ({error.reason} at byte {error.start})"
            )
    if text is None:
        return Rejection(item.source, "missing_transcript", "no transcript given")
    text = str(text).lstrip("\ufeff").strip()
    if not text:
        where = Path(item.text_path).name if item.text_path is not None else "the transcript"
        return Rejection(item.source, "empty_transcript", f"{where} is empty")
    return text


# ---------------------------------------------------------------------------------------------------------
# Files


def _walk_files(root: Path, exclude: Path | None) -> Iterator[PurePosixPath]:
    """Relative paths of the files under root in sorted order; follows folder links once; skips hidden names."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or (exclude is not None and Path(folder).resolve() == exclude):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        relative_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in sorted(files):
            if not name.startswith("."):
                yield relative_folder / name


def _relative_source(path: Path, root: Path) -> str:
    """`path` relative to `root` as POSIX text when it is inside it, else the absolute path."""
    try:
        return Path(os.path.normpath(path)).relative_to(root).as_posix()
    except ValueError:
        return Path(os.path.normpath(path)).as_posix()


def _read_tsv(
    tsv: Path, *, header_required: bool = True
) -> tuple[list[str] | None, list[tuple[int, list[str] | bytes]]]:
    """(header or None, [(line number, fields or the raw bytes of a line that is not UTF-8)]); blank lines skipped.

    Read line by line from bytes so one bad line is one rejection, not a failed run. No CSV quoting: Common
    Voice TSVs are unquoted and sentences may contain quote characters.
    """
    try:
        data = tsv.read_bytes()
    except OSError as error:
        raise CorpusError(f"{tsv}: cannot read ({error.strerror or error})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    header: list[str] | None = None
    rows: list[tuple[int, list[str] | bytes]] = []
    for line_number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            fields = raw.decode("utf-8").split("\t")
        except UnicodeDecodeError:
            rows.append((line_number, raw))
            continue
        if header is None and not rows and (header_required or _is_tsv_header(fields)):
            header = [name.strip() for name in fields]
            continue
        rows.append((line_number, fields))
    return header, rows


def _raw_field(line: bytes, index: int) -> str:
    """Field `index` of a tab-separated line that is not UTF-8, readable enough to name it in a rejection."""
    fields = line.split(b"\t")
    return (
        fields[index].strip().decode("utf-8", "replace")
        if index < len(fields)
        else line[:60].decode("utf-8", "replace")
    )


def _is_tsv_header(fields: list[str]) -> bool:
    names = [field.strip().lower() for field in fields[:2]]
    return len(names) == 2 and names[0] == "path" and names[1] in ("text", "sentence", "transcript")

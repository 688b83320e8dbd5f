"""Finding and validating inputs: turn a corpus into `Item`s to decode and `Rejection`s to record.

Five kinds of source, detected by `open_corpus` (or chosen with `open_hf_corpus`):

- folder: `ID.wav` + `ID.txt` pairs at any depth (`.flac`, `.mp3`, `.ogg` too). Top-level sub-folders named
  `train`, `validation`/`dev`, `test` are kept as splits. Hidden files and folders (".name") are not inputs.
- common_voice: a release folder (`train.tsv`, `dev.tsv`, `test.tsv`, `clips/`); its splits are kept and
  `client_id` is the speaker. With `cv_train="validated"`, train is `validated.tsv` minus every clip whose
  speaker or sentence is in `dev.tsv` or `test.tsv` (those are rejections `cv_speaker_in_dev_test` /
  `cv_sentence_in_dev_test`); dev and test stay as released.
- tsv: one `path<TAB>text` per line (optional header `path<TAB>text[<TAB>speaker…]`), paths relative to the
  TSV's folder or absolute.
- ali: a folder with anaouder `.ali` alignments (detected when it holds any, or `ali=True`): every aligned
  sentence is an input cut out of its long recording (`wdsbr.ali`); ID.wav + ID.txt pairs beside them are
  listed as in a folder, the recordings the .ali files align are not.
- hf: a Hugging Face dataset (hub name or local folder) read with `datasets` in streaming mode; audio bytes
  are decoded by `wdsbr.audio`, not by `datasets`.

Every input becomes exactly one `Item` or one `Rejection` (reason codes in `REASONS`), so a run can prove
kept + rejected == found. Keys are derived from the source's relative path (or id), sanitised to
`[A-Za-z0-9_-]`, at most `MAX_KEY_CHARS` long, and made unique in listing order.
Problems with the corpus as a whole (missing, wrong columns) raise `CorpusError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

from wdsbr.audio import AUDIO_EXTENSIONS
from wdsbr.text import clean_text

SPLITS = ("train", "validation", "test")
# Split folder / TSV / HF split names -> our split names.
SPLIT_NAMES = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}
COMMON_VOICE_TSVS = {"train.tsv": "train", "dev.tsv": "validation", "test.tsv": "test"}
CV_TRAIN_SOURCES = {"train": "train.tsv", "validated": "validated.tsv"}  # --cv-train
# When one stem has several audio files beside its .txt, the first of these wins (lossless before lossy).
AUDIO_PREFERENCE = (".flac", ".wav", ".ogg", ".mp3")
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
    "cv_sentence_in_dev_test": "--cv-train validated: the clip's sentence is in dev.tsv or test.tsv (exact or after clean_text)",
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
            return Rejection(item.source, "text_not_utf8", f"{name} is not valid UTF-8 ({error.reason} at byte {error.start})")
    if text is None:
        return Rejection(item.source, "missing_transcript", "no transcript given")
    text = str(text).lstrip("\ufeff").strip()
    if not text:
        where = Path(item.text_path).name if item.text_path is not None else "the transcript"
        return Rejection(item.source, "empty_transcript", f"{where} is empty")
    return text


# ---------------------------------------------------------------------------------------------------------
# Opening a source


def detect_kind(path: Path) -> str:
    """`tsv` for a .tsv file, `common_voice` for a folder with clips/ and train/dev/test.tsv, else `folder`."""
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder (expected a corpus folder, a Common Voice release or a .tsv)")
    if path.is_file():
        if path.suffix.lower() == ".tsv":
            return "tsv"
        raise CorpusError(f"{path}: a file that is not a .tsv manifest (give a corpus folder or a path<TAB>text .tsv)")
    if (path / "clips").is_dir() and any((path / name).is_file() for name in COMMON_VOICE_TSVS):
        return "common_voice"
    return "folder"


def open_corpus(path: str | Path, *, exclude: str | Path | None = None, speaker_from_folder: bool = False,
                cv_train: str = "train", ali: bool = False) -> Corpus:
    """List a folder, Common Voice release, TSV manifest or folder of .ali alignments (kind detected); `exclude`
    is a folder to skip (the output).

    `speaker_from_folder`: in a folder corpus, the first folder below the root (below the split folder when the
    corpus has split folders) names the speaker, so hash splits keep each speaker in one split.
    `cv_train`: a Common Voice release's train split from "train" (train.tsv) or "validated" (validated.tsv
    minus the speakers and sentences of dev.tsv and test.tsv).
    `ali`: read the folder as .ali alignments (detected anyway when it holds .ali files); an error if it has none."""
    path = Path(path)
    kind = detect_kind(path)
    root = path.resolve()
    excluded = Path(exclude).resolve() if exclude is not None else None
    if cv_train not in CV_TRAIN_SOURCES:
        raise CorpusError(f"--cv-train {cv_train!r}: expected one of {', '.join(CV_TRAIN_SOURCES)}")
    if cv_train != "train" and kind != "common_voice":
        raise CorpusError(f"--cv-train {cv_train}: {path} is not a Common Voice release folder (clips/ + dev.tsv, test.tsv)")
    has_ali = kind == "folder" and any(p.suffix.lower() == ".ali" for p in _walk_files(root, excluded))
    if ali and not has_ali:
        raise CorpusError(f"--ali: {path} is not a folder of .ali alignments (no .ali file in it)")
    if has_ali:
        kind = "ali"
    description: dict[str, Any] = {"kind": kind, "path": str(root)}
    if kind == "tsv":
        entries = list_tsv(root)
    elif kind == "common_voice":
        entries = list_common_voice(root, train_from=cv_train, info=description)
    elif kind == "ali":
        entries = list_ali(root, exclude=excluded, speaker_from_folder=speaker_from_folder, info=description)
    else:
        entries = list_folder(root, exclude=excluded, speaker_from_folder=speaker_from_folder)
    return Corpus(kind, description, entries, total=len(entries), listed=True)


def list_folder(root: Path, *, exclude: Path | None = None, speaker_from_folder: bool = False,
                skip: frozenset[PurePosixPath] = frozenset(), taken: dict[str, str] | None = None) -> list[Item | Rejection]:
    """Pair `ID.<audio>` with `ID.txt` in the same folder, at any depth, in sorted path order.

    `skip`: relative paths that are not inputs here (the recordings .ali files align); `taken`: keys already
    claimed by other entries of the same corpus."""
    groups: dict[tuple[str, str], list[PurePosixPath]] = {}
    for relative in _walk_files(root, exclude):
        suffix = relative.suffix.lower()
        if relative in skip:
            continue
        if suffix == ".txt" or suffix in AUDIO_EXTENSIONS:
            groups.setdefault((str(relative.parent), relative.stem), []).append(relative)
    top_dirs = {child.name.lower() for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")}
    split_folders = sorted(top_dirs & set(SPLIT_NAMES))

    entries: list[Item | Rejection] = []
    taken = {} if taken is None else taken
    for (_, stem), paths in sorted(groups.items()):
        texts = sorted(p for p in paths if p.suffix.lower() == ".txt")
        audios = sorted(
            (p for p in paths if p.suffix.lower() != ".txt"), key=lambda p: (AUDIO_PREFERENCE.index(p.suffix.lower()), str(p))
        )
        split = None
        if split_folders:
            first = audios[0] if audios else texts[0]
            top = first.parts[0].lower() if len(first.parts) > 1 else None
            if top not in SPLIT_NAMES:
                detail = f"the corpus has split folders ({', '.join(split_folders)}); this file is in none of them"
                entries.extend(Rejection(str(p), "outside_splits", detail) for p in (audios or texts))
                continue
            split = SPLIT_NAMES[top]
        if not audios:
            detail = f"no {'/'.join(AUDIO_EXTENSIONS)} file named {stem!r} beside it"
            entries.extend(Rejection(str(t), "missing_audio", detail) for t in texts)
            continue
        if not texts:
            entries.extend(Rejection(str(a), "missing_transcript", f"no {stem}.txt beside it") for a in audios)
            continue
        chosen, *others = audios
        detail = f"{chosen.name} is used (preference flac > wav > ogg > mp3)"
        entries.extend(Rejection(str(a), "ambiguous_audio", detail) for a in others)
        entries.extend(Rejection(str(t), "ambiguous_transcript", f"{texts[0].name} is used") for t in texts[1:])
        source = str(chosen)
        key = claim_key(make_key(str(chosen.with_suffix(""))), source, taken)
        if key is None:
            entries.append(Rejection(source, "duplicate_key", "listed twice"))
            continue
        folders = chosen.parts[1 if split else 0 : -1]
        speaker = folders[0] if speaker_from_folder and folders else None
        entries.append(Item(key=key, source=source, audio=str(root / chosen), text_path=str(root / texts[0]), split=split,
                            speaker=speaker))
    return entries


def list_common_voice(root: Path, *, train_from: str = "train", info: dict[str, Any] | None = None) -> list[Item | Rejection]:
    """Rows of train.tsv / dev.tsv / test.tsv (dev -> validation) with clips/ audio and client_id as speaker.

    `train_from="validated"`: train is validated.tsv instead of train.tsv, minus every clip whose speaker
    (`client_id`) or sentence is in dev.tsv or test.tsv — rejected as `cv_speaker_in_dev_test` (checked first)
    or `cv_sentence_in_dev_test`. Sentences match when their text is equal, or equal after `clean_text` (the
    detail says which). A validated.tsv row for a clip that dev.tsv or test.tsv lists is that clip's dev/test
    input, not a second one: it is not listed again, and `info` counts it. dev and test stay as released.
    `info` (the manifest's "source") receives what was read and excluded.
    """
    tables = {split: (tsv_name, *_read_cv_tsv(root / tsv_name)) for tsv_name, split in COMMON_VOICE_TSVS.items()
              if (root / tsv_name).is_file() and not (split == "train" and train_from != "train")}
    held_out = _held_out(tables) if train_from == "validated" else {}
    if train_from == "validated":
        validated = root / CV_TRAIN_SOURCES["validated"]
        if not validated.is_file():
            raise CorpusError(f"--cv-train validated: {validated} does not exist (a Common Voice release has one)")
        if not held_out["files"]:
            raise CorpusError(f"--cv-train validated: {root} has no dev.tsv or test.tsv to keep out of train")
        tables = {"train": (validated.name, *_read_cv_tsv(validated)), **tables}

    entries: list[Item | Rejection] = []
    taken: dict[str, str] = {}
    excluded = {"cv_speaker_in_dev_test": 0, "cv_sentence_in_dev_test": 0}
    rows_in_held_out = 0
    for split, (tsv_name, header, rows) in tables.items():
        for line_number, fields in rows:
            where = f"{tsv_name} line {line_number}"
            if isinstance(fields, bytes):
                clip = _raw_field(fields, header.index("path"))
                entries.append(Rejection(f"clips/{clip}", "text_not_utf8", f"{where} is not valid UTF-8"))
                continue
            row = dict(zip(header, fields))
            clip = row.get("path", "").strip()
            source = f"clips/{clip}"
            if not clip:
                entries.append(Rejection(where, "missing_audio", f"{where} has no path"))
                continue
            if train_from == "validated" and split == "train":
                if clip in held_out["clips"]:
                    rows_in_held_out += 1
                    continue
                rejection = _held_out_rejection(row, source, where, held_out)
                if rejection is not None:
                    excluded[rejection.reason] += 1
                    entries.append(rejection)
                    continue
            if not (root / "clips" / clip).is_file():
                entries.append(Rejection(source, "missing_file", f"{where}: {source} does not exist"))
                continue
            key = claim_key(make_key(PurePosixPath(clip).stem), source, taken)
            if key is None:
                entries.append(Rejection(source, "duplicate_key", f"{where}: listed twice"))
                continue
            meta = {name: value for name, value in row.items() if name not in ("path", "sentence", "client_id") and value != ""}
            entries.append(
                Item(key=key, source=source, audio=str(root / "clips" / clip), text=row.get("sentence"), split=split,
                     speaker=row.get("client_id") or None, meta=meta)
            )
    if info is not None and train_from == "validated":
        info["cv_train"] = {
            "train_from": "validated.tsv",
            "held_out": held_out["files"],
            "sentence_match": "exact text, or equal after wdsbr.text.clean_text",
            "excluded_from_train": excluded,
            "validated_rows_of_dev_test_clips": rows_in_held_out,
        }
    return entries


def _read_cv_tsv(tsv: Path) -> tuple[list[str], list[tuple[int, list[str] | bytes]]]:
    header, rows = _read_tsv(tsv)
    if header is None or "path" not in header or "sentence" not in header:
        raise CorpusError(f"{tsv}: expected a header with 'path' and 'sentence' columns (a Common Voice TSV), got {header}")
    return header, rows


def _held_out(tables: dict[str, tuple]) -> dict[str, Any]:
    """What dev.tsv and test.tsv hold, every row counted (whether or not its clip exists): speaker -> files,
    exact sentence -> files, cleaned sentence -> files, clip names."""
    held: dict[str, Any] = {"files": [], "clips": set(), "speakers": {}, "sentences": {}, "cleaned": {}}
    for split in ("validation", "test"):
        if split not in tables:
            continue
        tsv_name, header, rows = tables[split]
        held["files"].append(tsv_name)
        for _, fields in rows:
            if isinstance(fields, bytes):  # its speaker and sentence cannot be read; its clip name can
                held["clips"].add(_raw_field(fields, header.index("path")))
                continue
            row = dict(zip(header, fields))
            held["clips"].add(row.get("path", "").strip())
            sentence = row.get("sentence", "").strip()
            for table, value in (("speakers", row.get("client_id", "").strip()), ("sentences", sentence),
                                 ("cleaned", clean_text(sentence))):
                if value:
                    held[table].setdefault(value, set()).add(tsv_name)
    return held


def _held_out_rejection(row: dict[str, str], source: str, where: str, held: dict[str, Any]) -> Rejection | None:
    """The rejection of a validated.tsv row whose speaker or sentence is in dev/test, else None."""
    speaker = row.get("client_id", "").strip()
    if speaker and speaker in held["speakers"]:
        files = " and ".join(sorted(held["speakers"][speaker]))
        return Rejection(source, "cv_speaker_in_dev_test", f"{where}: speaker {_short(speaker, 16)} also speaks in {files}")
    sentence = row.get("sentence", "").strip()
    if sentence in held["sentences"]:
        files = " and ".join(sorted(held["sentences"][sentence]))
        return Rejection(source, "cv_sentence_in_dev_test", f"{where}: sentence {_short(sentence, 40)!r} is in {files} (exact text)")
    cleaned = clean_text(sentence)
    if cleaned and cleaned in held["cleaned"]:
        files = " and ".join(sorted(held["cleaned"][cleaned]))
        return Rejection(source, "cv_sentence_in_dev_test",
                         f"{where}: sentence {_short(sentence, 40)!r} is in {files} (equal after clean_text)")
    return None


def _short(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length] + "…"


def list_ali(root: Path, *, exclude: Path | None = None, speaker_from_folder: bool = False,
             info: dict[str, Any] | None = None) -> list[Item | Rejection]:
    """Every aligned sentence of every `.ali` file (any depth, sorted) as an Item cut out of its recording, then
    the folder's ID.wav + ID.txt pairs (`list_folder`) without the recordings the .ali files align.

    An item's source is `path/of.ali:LINE`; its KEY.json gets `recording`, `start`, `end`, `gender`, `lang`
    and `accent` when known, and the .ali header (`source`, `author`, `licence`, ...). Speaker "unknown" is no speaker: such segments
    are split by their recording, so one recording is never in two splits. Top-level split folders are kept
    as in `list_folder`. Rejections: `missing_audio` (no recording), `empty_transcript`, `empty_segment`,
    `bad_alignment`; `too_long` and `beyond_recording_end` come when the segment is read.
    """
    from wdsbr.ali import RECORDING_EXTENSIONS, UNKNOWN, parse_ali  # here: only this source needs it

    files = [relative for relative in _walk_files(root, exclude) if relative.suffix.lower() == ".ali"]
    top_dirs = {child.name.lower() for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")}
    split_folders = sorted(top_dirs & set(SPLIT_NAMES))
    entries: list[Item | Rejection] = []
    taken: dict[str, str] = {}
    recordings: set[str] = set()  # every recording aligned, inside the root or not
    for relative in files:
        name = str(relative)
        try:
            ali = parse_ali(root / relative)
        except UnicodeDecodeError as error:
            entries.append(Rejection(name, "text_not_utf8", f"{relative.name} is not valid UTF-8 ({error.reason} at byte {error.start})"))
            continue
        except OSError as error:
            entries.append(Rejection(name, "unreadable_transcript", f"{relative.name}: {error.strerror or error}"))
            continue
        entries.extend(Rejection(f"{name}:{line}", "bad_alignment", f"{relative.name} line {line}: {problem}")
                       for line, problem in ali.problems)
        split = None
        if split_folders:
            top = relative.parts[0].lower() if len(relative.parts) > 1 else None
            if top not in SPLIT_NAMES:
                detail = f"the corpus has split folders ({', '.join(split_folders)}); this file is in none of them"
                entries.extend(Rejection(f"{name}:{sentence.line}", "outside_splits", detail) for sentence in ali.sentences)
                continue
            split = SPLIT_NAMES[top]
        audio = ali.audio_path
        recording = _relative_source(audio, root) if audio is not None else None
        if audio is not None and audio.is_file():
            recordings.add(recording)
        folders = relative.parts[1 if split else 0 : -1]
        folder_speaker = folders[0] if speaker_from_folder and folders else None
        header = {k: v for k, v in ali.header.items() if k not in ("audio-path", "start", "end", "parser") and v not in ("", [])}
        for sentence in ali.sentences:
            source = f"{name}:{sentence.line}"
            where = f"{relative.name} line {sentence.line}"
            if audio is None or not audio.is_file():
                detail = (f"{where}: its recording {recording} does not exist" if audio is not None else
                          f"{where}: no {{audio-path: …}} and no {relative.stem}.{{{','.join(RECORDING_EXTENSIONS)}}} beside it")
                entries.append(Rejection(source, "missing_audio", detail))
                continue
            if not sentence.text:
                entries.append(Rejection(source, "empty_transcript", f"{where} has a segment and no text"))
                continue
            if not sentence.end > sentence.start or sentence.start < 0:
                entries.append(Rejection(source, "empty_segment", f"{where}: segment {sentence.start:g}-{sentence.end:g} s is empty"))
                continue
            stem = str(relative.with_suffix(""))
            key = claim_key(make_key(f"{stem}/{round(sentence.start * 1000):08d}-{round(sentence.end * 1000):08d}"), source, taken)
            if key is None:
                entries.append(Rejection(source, "duplicate_key", f"{where}: listed twice"))
                continue
            speaker = sentence.metadata.get("speaker")
            speaker = None if speaker in (UNKNOWN, "", None) else str(speaker)
            gender = sentence.metadata.get("gender")
            meta = {**header, "recording": recording, "start": sentence.start, "end": sentence.end}
            if gender not in (UNKNOWN, "", None):
                meta["gender"] = gender
            meta.update({k: sentence.metadata[k] for k in ("lang", "accent") if sentence.metadata.get(k)})
            entries.append(Item(key=key, source=source, audio=str(audio), text=sentence.text, split=split,
                                speaker=speaker or folder_speaker, meta=meta, segment=(sentence.start, sentence.end),
                                split_group=recording))
    inside = frozenset(PurePosixPath(recording) for recording in recordings if not Path(recording).is_absolute())
    entries += list_folder(root, exclude=exclude, speaker_from_folder=speaker_from_folder, skip=inside, taken=taken)
    if info is not None:
        info["ali_files"] = len(files)
        info["recordings"] = len(recordings)
    return entries


def list_tsv(tsv: Path) -> list[Item | Rejection]:
    """Rows of a `path<TAB>text` manifest; a header `path<TAB>text[<TAB>speaker<TAB>…]` names extra columns."""
    root = tsv.parent
    header, rows = _read_tsv(tsv, header_required=False)
    entries: list[Item | Rejection] = []
    taken: dict[str, str] = {}
    for line_number, fields in rows:
        where = f"{tsv.name} line {line_number}"
        if isinstance(fields, bytes):
            entries.append(Rejection(_raw_field(fields, 0), "text_not_utf8", f"{where} is not valid UTF-8"))
            continue
        written = fields[0].strip()
        if not written:
            entries.append(Rejection(where, "missing_audio", f"{where} has no audio path"))
            continue
        audio = Path(written) if Path(written).is_absolute() else root / written
        source = _relative_source(audio, root)
        if len(fields) < 2:
            entries.append(Rejection(source, "missing_transcript", f"{where} has no tab-separated transcript"))
            continue
        if header is None:
            text, row = "\t".join(fields[1:]), {}
        else:
            row = dict(zip(header[2:], fields[2:]))
            text = fields[1]
        if not audio.is_file():
            entries.append(Rejection(source, "missing_file", f"{where}: {written} does not exist"))
            continue
        key = claim_key(make_key(str(PurePosixPath(source).with_suffix(""))), source, taken)
        if key is None:
            entries.append(Rejection(source, "duplicate_key", f"{where}: listed twice"))
            continue
        speaker = row.pop("speaker", "") or None
        meta = {name: value for name, value in row.items() if value != ""}
        entries.append(Item(key=key, source=source, audio=str(audio), text=text, speaker=speaker, meta=meta))
    return entries


def open_hf_corpus(
    name: str,
    *,
    config: str | None = None,
    splits: Iterable[str] = (),
    token: str | None = None,
    text_column: str = "sentence",
    audio_column: str = "audio",
    speaker_column: str | None = None,
) -> Corpus:
    """Open a Hugging Face dataset (hub name or local folder) in streaming mode, checking splits and columns first.

    With no `splits`, every split named train/validation/dev/test is used. Audio is cast to
    `datasets.Audio(decode=False)`: the bytes (or a local path) are decoded later by `wdsbr.audio`.
    The token is passed to `datasets` only; it is never part of the description or an error message.
    """
    import datasets  # imported here: heavy, and only this source needs it

    splits = list(splits)
    unknown = [split for split in splits if split not in SPLIT_NAMES]
    if unknown:
        raise CorpusError(f"--hf-split {unknown[0]!r}: not a split name this tool maps (use train, validation, dev or test)")
    streams = _load_hf(datasets, name, config, token)
    available = list(streams)
    chosen = splits or [split for split in available if split in SPLIT_NAMES]
    missing = [split for split in chosen if split not in available]
    if missing or not chosen:
        wanted = f"split {missing[0]!r}" if missing else "a train/validation/dev/test split"
        raise CorpusError(f"Hugging Face dataset {name}: no {wanted}; it has {', '.join(available) or 'no splits'}")

    for split in chosen:
        features = streams[split].features
        if features is None:  # unknown until the first row is read; the stream checks the row instead
            continue
        needed = [column for column in (audio_column, text_column, speaker_column) if column]
        absent = [column for column in needed if column not in features]
        if absent:
            raise CorpusError(
                f"Hugging Face dataset {name} split {split}: no column {absent[0]!r} (columns: {', '.join(features)}); "
                "choose with --audio-column / --text-column / --speaker-column"
            )
        if speaker_column is None and "client_id" in features:
            speaker_column = "client_id"
    try:
        streams = {split: streams[split].cast_column(audio_column, datasets.Audio(decode=False)) for split in chosen}
    except (ValueError, TypeError, KeyError) as error:
        raise CorpusError(f"Hugging Face dataset {name}: column {audio_column!r} is not audio ({_redact(error, token)})") from None

    description = {
        "kind": "hf",
        "name": name,
        "config": config,
        "splits": {split: SPLIT_NAMES[split] for split in chosen},
        "columns": {"audio": audio_column, "text": text_column, "speaker": speaker_column},
    }
    total = _hf_total(streams)
    columns = (audio_column, text_column, speaker_column)
    return Corpus("hf", description, _stream_hf(name, config, streams, columns), total=total, listed=False)


def _load_hf(datasets: Any, name: str, config: str | None, token: str | None) -> dict[str, Any]:
    """Split name -> IterableDataset; a folder written by `save_to_disk` is read with `load_from_disk`."""
    local = Path(name)
    try:
        if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.Dataset):
                loaded = {str(loaded.split or "train"): loaded}
            return {split: dataset.to_iterable_dataset() for split, dataset in loaded.items()}
        return dict(datasets.load_dataset(name, config, streaming=True, token=token))
    except Exception as error:  # datasets raises many types (FileNotFoundError, ConnectionError, hub errors, ...)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CorpusError(f"cannot open Hugging Face dataset {name}: {_redact(message, token)}") from None


def _hf_total(streams: dict[str, Any]) -> int | None:
    """Rows over the chosen splits when the dataset card says so (for the progress bar), else None."""
    total = 0
    for split, stream in streams.items():
        info_splits = getattr(stream.info, "splits", None) or {}
        count = info_splits[split].num_examples if split in info_splits else None
        if not count:
            return None
        total += count
    return total


def _stream_hf(name: str, config: str | None, streams: dict[str, Any], columns: tuple) -> Iterator[Item | Rejection]:
    audio_column, text_column, speaker_column = columns
    taken: dict[str, str] = {}
    for hf_split, stream in streams.items():
        for index, example in enumerate(stream):
            source = f"{name}:{hf_split}:{index}"
            if audio_column not in example or text_column not in example:
                raise CorpusError(
                    f"Hugging Face dataset {name} split {hf_split}: rows have no column {audio_column!r} or {text_column!r} "
                    f"(columns: {', '.join(example)}); choose with --audio-column / --text-column"
                )
            audio = example[audio_column]
            data = audio.get("bytes") if isinstance(audio, dict) else None
            path = audio.get("path") if isinstance(audio, dict) else None
            if data is None and path and os.path.isfile(path):
                data = path  # a local file: decoded from its path by the worker
            if data is None:
                if path:
                    yield Rejection(source, "missing_file", f"audio {path} is not a local file and has no bytes")
                else:
                    yield Rejection(source, "missing_audio", f"no audio in column {audio_column!r}")
                continue
            stem = PurePosixPath(str(path).replace("\\", "/")).stem if path else f"{hf_split}-{index:09d}"
            key = claim_key(make_key(stem), source, taken)
            if key is None:
                yield Rejection(source, "duplicate_key", "listed twice")
                continue
            text = example.get(text_column)
            speaker_key = speaker_column or ("client_id" if "client_id" in example else None)  # features were unknown
            speaker = example.get(speaker_key) if speaker_key else None
            meta = {
                column: value
                for column, value in example.items()
                if column not in (audio_column, text_column, speaker_key)
                and isinstance(value, (str, int, float, bool)) and value != ""
                and not (isinstance(value, float) and not math.isfinite(value))  # NaN is not JSON
            }
            if path:
                meta["hf_audio_path"] = str(path)
            if config:
                meta["hf_config"] = config
            yield Item(key=key, source=source, audio=data, text=None if text is None else str(text),
                       split=SPLIT_NAMES[hf_split], speaker=str(speaker) if speaker not in (None, "") else None, meta=meta)


def _redact(message: Any, token: str | None) -> str:
    message = str(message)
    return message.replace(token, "***") if token else message


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


def _read_tsv(tsv: Path, *, header_required: bool = True) -> tuple[list[str] | None, list[tuple[int, list[str] | bytes]]]:
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
    return fields[index].strip().decode("utf-8", "replace") if index < len(fields) else line[:60].decode("utf-8", "replace")


def _is_tsv_header(fields: list[str]) -> bool:
    names = [field.strip().lower() for field in fields[:2]]
    return len(names) == 2 and names[0] == "path" and names[1] in ("text", "sentence", "transcript")

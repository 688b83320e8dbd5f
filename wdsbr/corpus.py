"""Finding and validating inputs: turn a corpus into `Item`s to decode and `Rejection`s to record.

Five kinds of source, one module each in `wdsbr.sources`, detected by `open_corpus` (or chosen with
`open_hf_corpus`):

- folder (`sources.folder`): `ID.wav` + `ID.txt` pairs at any depth; top-level `train`, `validation`/`dev`,
  `test` folders are kept as splits.
- common_voice (`sources.common_voice`): a release folder (`train.tsv`, `dev.tsv`, `test.tsv`, `clips/`); its
  splits are kept, `client_id` is the speaker; `cv_train="validated"` trains on validated.tsv minus dev/test.
- tsv (`sources.tsv`): one `path<TAB>text` per line, paths relative to the TSV's folder or absolute.
- ali (`sources.ali`): a folder with anaouder `.ali` alignments: every aligned sentence is an input cut out
  of its long recording.
- hf (`sources.hf`): a Hugging Face dataset (hub name or local folder) streamed with `datasets`.

`open_corpus` detects the kind of a path (`detect_kind`; a folder holding .ali files is `ali`), checks the
options against it and lists every entry up front; `open_hf_corpus` checks splits and columns, then streams.
Every input becomes exactly one `Item` or one `Rejection` (reason codes in `REASONS`), so a run can prove
kept + rejected == found. The types, keys and splits the sources share live in `wdsbr.sources.base` and are
re-exported here: callers import from `wdsbr.corpus` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wdsbr.sources.ali import list_ali
from wdsbr.sources.base import (
    MAX_KEY_CHARS,
    REASONS,
    SPLITS,
    Corpus,
    CorpusError,
    Item,
    Rejection,
    _walk_files,
    assign_split,
    claim_key,
    hash_split,
    make_key,
    read_transcript,
)
from wdsbr.sources.common_voice import COMMON_VOICE_TSVS, CV_TRAIN_SOURCES, list_common_voice
from wdsbr.sources.folder import list_folder
from wdsbr.sources.hf import open_hf_corpus
from wdsbr.sources.tsv import list_tsv

__all__ = [
    "MAX_KEY_CHARS",
    "REASONS",
    "SPLITS",
    "Corpus",
    "CorpusError",
    "Item",
    "Rejection",
    "assign_split",
    "claim_key",
    "detect_kind",
    "hash_split",
    "make_key",
    "open_corpus",
    "open_hf_corpus",
    "read_transcript",
]


def detect_kind(path: Path) -> str:
    """`tsv` for a .tsv file, `common_voice` for a folder with clips/ and train/dev/test.tsv, else `folder`."""
    if not path.exists():
        raise CorpusError(
            f"{path}: no such file or folder (expected a corpus folder, a Common Voice release or a .tsv)"
        )
    if path.is_file():
        if path.suffix.lower() == ".tsv":
            return "tsv"
        raise CorpusError(f"{path}: a file that is not a .tsv manifest (give a corpus folder or a path<TAB>text .tsv)")
    if (path / "clips").is_dir() and any((path / name).is_file() for name in COMMON_VOICE_TSVS):
        return "common_voice"
    return "folder"


def open_corpus(
    path: str | Path,
    *,
    exclude: str | Path | None = None,
    speaker_from_folder: bool = False,
    cv_train: str = "train",
    ali: bool = False,
    ali_windows: float | None = None,
) -> Corpus:
    """List a folder, Common Voice release, TSV manifest or folder of .ali alignments (kind detected); `exclude`
    is a folder to skip (the output).

    `speaker_from_folder`: in a folder corpus, the first folder below the root (below the split folder when the
    corpus has split folders) names the speaker, so hash splits keep each speaker in one split.
    `cv_train`: a Common Voice release's train split from "train" (train.tsv) or "validated" (validated.tsv
    minus the speakers and sentences of dev.tsv and test.tsv).
    `ali`: read the folder as .ali alignments (detected anyway when it holds .ali files); an error if it has none.
    `ali_windows` (seconds): an .ali recording's consecutive sentences grouped into windows of at most that long,
    with their segments (`wdsbr.sources.ali.list_ali`); an error for a corpus without .ali files."""
    path = Path(path)
    kind = detect_kind(path)
    root = path.resolve()
    excluded = Path(exclude).resolve() if exclude is not None else None
    if cv_train not in CV_TRAIN_SOURCES:
        raise CorpusError(f"--cv-train {cv_train!r}: expected one of {', '.join(CV_TRAIN_SOURCES)}")
    if cv_train != "train" and kind != "common_voice":
        raise CorpusError(
            f"--cv-train {cv_train}: {path} is not a Common Voice release folder (clips/ + dev.tsv, test.tsv)"
        )
    has_ali = kind == "folder" and any(p.suffix.lower() == ".ali" for p in _walk_files(root, excluded))
    if ali and not has_ali:
        raise CorpusError(f"--ali: {path} is not a folder of .ali alignments (no .ali file in it)")
    if ali_windows and not has_ali:
        raise CorpusError(f"--ali-windows: {path} is not a folder of .ali alignments (no .ali file in it)")
    if has_ali:
        kind = "ali"
    description: dict[str, Any] = {"kind": kind, "path": str(root)}
    if kind == "tsv":
        entries = list_tsv(root)
    elif kind == "common_voice":
        entries = list_common_voice(root, train_from=cv_train, info=description)
    elif kind == "ali":
        entries = list_ali(
            root, exclude=excluded, speaker_from_folder=speaker_from_folder, info=description, windows=ali_windows
        )
        if ali_windows:
            description["ali_windows"] = ali_windows
    else:
        entries = list_folder(root, exclude=excluded, speaker_from_folder=speaker_from_folder)
    return Corpus(kind, description, entries, total=len(entries), listed=True)

"""Common Voice releases: a folder with `train.tsv`, `dev.tsv`, `test.tsv` and `clips/`.

Its splits are kept and `client_id` is the speaker. With `cv_train="validated"`, train is `validated.tsv`
minus every clip whose speaker or sentence is in `dev.tsv` or `test.tsv` (those are rejections
`cv_speaker_in_dev_test` / `cv_sentence_in_dev_test`); dev and test stay as released.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from wdsbr.sources.base import CorpusError, Item, Rejection, _raw_field, _read_tsv, claim_key, make_key
from wdsbr.text import clean_text

COMMON_VOICE_TSVS = {"train.tsv": "train", "dev.tsv": "validation", "test.tsv": "test"}
CV_TRAIN_SOURCES = {"train": "train.tsv", "validated": "validated.tsv"}  # --cv-train


def list_common_voice(
    root: Path, *, train_from: str = "train", info: dict[str, Any] | None = None
) -> list[Item | Rejection]:
    """Rows of train.tsv / dev.tsv / test.tsv (dev -> validation) with clips/ audio and client_id as speaker.

    `train_from="validated"`: train is validated.tsv instead of train.tsv, minus every clip whose speaker
    (`client_id`) or sentence is in dev.tsv or test.tsv — rejected as `cv_speaker_in_dev_test` (checked first)
    or `cv_sentence_in_dev_test`. Sentences match when their text is equal, or equal after `clean_text` (the
    detail says which). A validated.tsv row for a clip that dev.tsv or test.tsv lists is that clip's dev/test
    input, not a second one: it is not listed again, and `info` counts it. dev and test stay as released.
    `info` (the manifest's "source") receives what was read and excluded.
    """
    tables = {
        split: (tsv_name, *_read_cv_tsv(root / tsv_name))
        for tsv_name, split in COMMON_VOICE_TSVS.items()
        if (root / tsv_name).is_file() and not (split == "train" and train_from != "train")
    }
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
            meta = {
                name: value
                for name, value in row.items()
                if name not in ("path", "sentence", "client_id") and value != ""
            }
            entries.append(
                Item(
                    key=key,
                    source=source,
                    audio=str(root / "clips" / clip),
                    text=row.get("sentence"),
                    split=split,
                    speaker=row.get("client_id") or None,
                    meta=meta,
                )
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
        raise CorpusError(
            f"{tsv}: expected a header with 'path' and 'sentence' columns (a Common Voice TSV), got {header}"
        )
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
            for table, value in (
                ("speakers", row.get("client_id", "").strip()),
                ("sentences", sentence),
                ("cleaned", clean_text(sentence)),
            ):
                if value:
                    held[table].setdefault(value, set()).add(tsv_name)
    return held


def _held_out_rejection(row: dict[str, str], source: str, where: str, held: dict[str, Any]) -> Rejection | None:
    """The rejection of a validated.tsv row whose speaker or sentence is in dev/test, else None."""
    speaker = row.get("client_id", "").strip()
    if speaker and speaker in held["speakers"]:
        files = " and ".join(sorted(held["speakers"][speaker]))
        return Rejection(
            source, "cv_speaker_in_dev_test", f"{where}: speaker {_short(speaker, 16)} also speaks in {files}"
        )
    sentence = row.get("sentence", "").strip()
    if sentence in held["sentences"]:
        files = " and ".join(sorted(held["sentences"][sentence]))
        return Rejection(
            source, "cv_sentence_in_dev_test", f"{where}: sentence {_short(sentence, 40)!r} is in {files} (exact text)"
        )
    cleaned = clean_text(sentence)
    if cleaned and cleaned in held["cleaned"]:
        files = " and ".join(sorted(held["cleaned"][cleaned]))
        return Rejection(
            source,
            "cv_sentence_in_dev_test",
            f"{where}: sentence {_short(sentence, 40)!r} is in {files} (equal after clean_text)",
        )
    return None


def _short(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length] + "…"

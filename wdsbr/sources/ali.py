"""anaouder `.ali` alignments: a folder whose aligned sentences are inputs cut out of their long recordings.

The folder is read this way when it holds any .ali file (or with `ali=True`). The .ali files are parsed by
`wdsbr.ali`; ID.wav + ID.txt pairs beside them are listed as in a folder (`wdsbr.sources.folder`), the
recordings the .ali files align are not.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from wdsbr.ali import RECORDING_EXTENSIONS, UNKNOWN, parse_ali
from wdsbr.sources.base import SPLIT_NAMES, Item, Rejection, _relative_source, _walk_files, claim_key, make_key
from wdsbr.sources.folder import list_folder


def list_ali(
    root: Path,
    *,
    exclude: Path | None = None,
    speaker_from_folder: bool = False,
    info: dict[str, Any] | None = None,
    windows: float | None = None,
) -> list[Item | Rejection]:
    """Every aligned sentence of every `.ali` file (any depth, sorted) as an Item cut out of its recording, then
    the folder's ID.wav + ID.txt pairs (`list_folder`) without the recordings the .ali files align.

    An item's source is `path/of.ali:LINE`; its KEY.json gets `recording`, `start`, `end`, `gender`, `lang` and
    `accent` when known, and the .ali header (`source`, `author`, `licence`, ...). Speaker "unknown" is no speaker:
    such segments are split by their recording, so one recording is never in two splits. Top-level split folders are
    kept as in `list_folder`. Rejections: `missing_audio` (no recording), `empty_transcript`, `empty_segment`,
    `bad_alignment`; `too_long` and `beyond_recording_end` come when the segment is read. Every item but a
    recording's first gets `previous_text`, the text of the item before it in the recording.

    `windows` (seconds, e.g. 30): consecutive sentences of a recording are grouped, in order, into one item of
    at most that long, from its first sentence's start to its last one's end (the audio between them too), its
    transcript their texts joined and its KEY.json `segments`, `[start, end, text]` from the window's start
    (`--timestamps` trains on them); a sentence that overlaps the one before starts a new window, and one longer
    than a window is an item alone (rejected as too_long when read). Its speaker, gender, … are the sentences'
    where they share one.
    """
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
            entries.append(
                Rejection(
                    name, "text_not_utf8", f"{relative.name} is not valid UTF-8 ({error.reason} at byte {error.start})"
                )
            )
            continue
        except OSError as error:
            entries.append(Rejection(name, "unreadable_transcript", f"{relative.name}: {error.strerror or error}"))
            continue
        entries.extend(
            Rejection(f"{name}:{line}", "bad_alignment", f"{relative.name} line {line}: {problem}")
            for line, problem in ali.problems
        )
        split = None
        if split_folders:
            top = relative.parts[0].lower() if len(relative.parts) > 1 else None
            if top not in SPLIT_NAMES:
                detail = f"the corpus has split folders ({', '.join(split_folders)}); this file is in none of them"
                entries.extend(
                    Rejection(f"{name}:{sentence.line}", "outside_splits", detail) for sentence in ali.sentences
                )
                continue
            split = SPLIT_NAMES[top]
        audio = ali.audio_path
        recording = _relative_source(audio, root) if audio is not None else None
        if audio is not None and audio.is_file():
            recordings.add(recording)
        folders = relative.parts[1 if split else 0 : -1]
        folder_speaker = folders[0] if speaker_from_folder and folders else None
        header = {
            k: v
            for k, v in ali.header.items()
            if k not in ("audio-path", "start", "end", "parser") and v not in ("", [])
        }
        kept: list[tuple[Any, dict[str, Any], str | None]] = []  # sentence, its KEY.json, its speaker
        for sentence in ali.sentences:
            source = f"{name}:{sentence.line}"
            where = f"{relative.name} line {sentence.line}"
            if audio is None or not audio.is_file():
                detail = (
                    f"{where}: its recording {recording} does not exist"
                    if audio is not None
                    else f"{where}: no {{audio-path: …}} and no "
                    f"{relative.stem}.{{{','.join(RECORDING_EXTENSIONS)}}} beside it"
                )
                entries.append(Rejection(source, "missing_audio", detail))
                continue
            if not sentence.text:
                entries.append(Rejection(source, "empty_transcript", f"{where} has a segment and no text"))
                continue
            if not sentence.end > sentence.start or sentence.start < 0:
                entries.append(
                    Rejection(
                        source, "empty_segment", f"{where}: segment {sentence.start:g}-{sentence.end:g} s is empty"
                    )
                )
                continue
            speaker = sentence.metadata.get("speaker")
            speaker = None if speaker in (UNKNOWN, "", None) else str(speaker)
            gender = sentence.metadata.get("gender")
            meta = {**header, "recording": recording, "start": sentence.start, "end": sentence.end}
            if gender not in (UNKNOWN, "", None):
                meta["gender"] = gender
            meta.update({k: sentence.metadata[k] for k in ("lang", "accent") if sentence.metadata.get(k)})
            kept.append((sentence, meta, speaker or folder_speaker))
        groups = _windows(kept, windows) if windows else [[one] for one in kept]
        previous = ""  # the text before each input in its recording: --prev-text trains on it
        for group in groups:
            (first, meta, speaker), last = group[0], group[-1][0]
            source = f"{name}:{first.line}" + (f"-{last.line}" if len(group) > 1 else "")
            stem = str(relative.with_suffix(""))
            key = claim_key(
                make_key(f"{stem}/{round(first.start * 1000):08d}-{round(last.end * 1000):08d}"), source, taken
            )
            if key is None:
                entries.append(Rejection(source, "duplicate_key", f"{relative.name} line {first.line}: listed twice"))
                continue
            text = " ".join(sentence.text for sentence, _, _ in group)
            if windows:  # one speaker, gender, lang… where the window's sentences share it
                meta = {k: v for k, v in meta.items() if all(m.get(k) == v for _, m, _ in group)}
                meta.update(
                    {
                        "start": first.start,
                        "end": last.end,
                        "segments": [
                            [
                                round(sentence.start - first.start, 3),
                                round(sentence.end - first.start, 3),
                                sentence.text,
                            ]
                            for sentence, _, _ in group
                        ],
                    }
                )
                speaker = speaker if all(s == speaker for _, _, s in group) else None
            if previous:
                meta = {**meta, "previous_text": previous}
            previous = text
            entries.append(
                Item(
                    key=key,
                    source=source,
                    audio=str(audio),
                    text=text,
                    split=split,
                    speaker=speaker,
                    meta=meta,
                    segment=(first.start, last.end),
                    split_group=recording,
                )
            )
    inside = frozenset(PurePosixPath(recording) for recording in recordings if not Path(recording).is_absolute())
    entries += list_folder(root, exclude=exclude, speaker_from_folder=speaker_from_folder, skip=inside, taken=taken)
    if info is not None:
        info["ali_files"] = len(files)
        info["recordings"] = len(recordings)
    return entries


def _windows(kept: list[tuple[Any, dict[str, Any], str | None]], seconds: float) -> list[list[tuple]]:
    """Consecutive sentences in windows of at most `seconds`, from the first one's start to the last one's end;
    a sentence that starts before the previous one ends starts a new window."""
    groups: list[list[tuple]] = []
    for entry in kept:
        sentence = entry[0]
        if groups:
            first, last = groups[-1][0][0], groups[-1][-1][0]
            if sentence.start >= last.end and sentence.end - first.start <= seconds:
                groups[-1].append(entry)
                continue
        groups.append([entry])
    return groups

"""Folder corpora: `ID.wav` + `ID.txt` pairs at any depth (`.flac`, `.mp3`, `.ogg` too).

Top-level sub-folders named `train`, `validation`/`dev`, `test` are kept as splits. Hidden files and folders
(".name") are not inputs. When one stem has several audio files or several .txt files, one is used and the
others are rejected (`ambiguous_audio`, `ambiguous_transcript`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from wdsbr.audio import AUDIO_EXTENSIONS
from wdsbr.sources.base import SPLIT_NAMES, Item, Rejection, _walk_files, claim_key, make_key

# When one stem has several audio files beside its .txt, the first of these wins (lossless before lossy).
AUDIO_PREFERENCE = (".flac", ".wav", ".ogg", ".mp3")


def list_folder(
    root: Path,
    *,
    exclude: Path | None = None,
    speaker_from_folder: bool = False,
    skip: frozenset[PurePosixPath] = frozenset(),
    taken: dict[str, str] | None = None,
) -> list[Item | Rejection]:
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
            (p for p in paths if p.suffix.lower() != ".txt"),
            key=lambda p: (AUDIO_PREFERENCE.index(p.suffix.lower()), str(p)),
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
        entries.append(
            Item(
                key=key,
                source=source,
                audio=str(root / chosen),
                text_path=str(root / texts[0]),
                split=split,
                speaker=speaker,
            )
        )
    return entries

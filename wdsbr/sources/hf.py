"""Hugging Face datasets (hub name or local folder), read with `datasets` in streaming mode.

Splits and columns are checked before any row is read; audio bytes are decoded by `wdsbr.audio`, not by
`datasets`. The token goes to `datasets` only, never into a description or an error message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from wdsbr.sources.base import SPLIT_NAMES, Corpus, CorpusError, Item, Rejection, claim_key, make_key


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
        raise CorpusError(
            f"--hf-split {unknown[0]!r}: not a split name this tool maps (use train, validation, dev or test)"
        )
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
        raise CorpusError(
            f"Hugging Face dataset {name}: column {audio_column!r} is not audio ({_redact(error, token)})"
        ) from None

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
                    f"Hugging Face dataset {name} split {hf_split}: rows have no column {audio_column!r} or "
                    f"{text_column!r} "
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
                and isinstance(value, (str, int, float, bool))
                and value != ""
                and not (isinstance(value, float) and not math.isfinite(value))  # NaN is not JSON
            }
            if path:
                meta["hf_audio_path"] = str(path)
            if config:
                meta["hf_config"] = config
            yield Item(
                key=key,
                source=source,
                audio=data,
                text=None if text is None else str(text),
                split=SPLIT_NAMES[hf_split],
                speaker=str(speaker) if speaker not in (None, "") else None,
                meta=meta,
            )


def _redact(message: Any, token: str | None) -> str:
    message = str(message)
    return message.replace(token, "***") if token else message

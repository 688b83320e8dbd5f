"""The evaluation CLI's `--data`: what it names, and the shards `launch/evaluate.py` reads.

Shards are read as they are. A plain corpus (a folder of ID.wav + ID.txt pairs, a path<TAB>text .tsv) is first
written to temporary shards by the project's own writer (same decoding, same validation, rejections listed),
and `--max-samples` copies the first N samples into one tar, so a folder and the shards made from it give the
same numbers, and every world size splits a subset the same way.
"""

from __future__ import annotations

import itertools
import math
import tarfile
from collections.abc import Callable
from pathlib import Path

import webdataset as wds

from wdsbr.corpus import CorpusError, Item, open_corpus
from wdsbr.data import SkipCounter
from wdsbr.shards import ShardError, ShardOptions, shard_corpus
from wdsbr.streams import count_samples, list_shards, read_shard_range


def eval_data_kind(spec: str) -> str:
    """What `--data` names: "shards" (a folder of .tar, a brace pattern, a .tar, a URL) or "corpus" (a folder of
    ID.wav + ID.txt pairs, or a path<TAB>text .tsv). Raises FileNotFoundError naming the path and the fix."""
    path = Path(spec)
    if path.is_dir() and not any(path.glob("*.tar")):
        try:
            corpus = open_corpus(path)
        except CorpusError as error:
            raise FileNotFoundError(str(error)) from None
        if corpus.kind == "common_voice":
            raise FileNotFoundError(
                f"{spec}: a Common Voice release has splits; shard it (tools/shard_corpus.py) and "
                "pass one split's shards, e.g. shards/test"
            )
        if any(isinstance(entry, Item) for entry in corpus.entries):
            return "corpus"
        split_folders = sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.glob("*.tar")))
        if split_folders:
            raise FileNotFoundError(
                f"{spec}: holds split folders ({', '.join(split_folders)}); "
                f"pass one of them, e.g. {path / split_folders[-1]}"
            )
        raise FileNotFoundError(f"{spec}: folder has no .tar shards and no audio + .txt pairs")
    if path.is_file() and path.suffix.lower() == ".tsv":
        return "corpus"
    if path.is_file() and not path.name.lower().endswith((".tar", ".tar.gz", ".tgz")):
        raise FileNotFoundError(f"{spec}: not a .tar shard (give shards, a folder of ID.wav + ID.txt pairs or a .tsv)")
    if not path.exists() and "{" not in spec and "://" not in spec and not spec.startswith("pipe:"):
        raise FileNotFoundError(f"{spec}: no such file or folder (give shards or a folder of ID.wav + ID.txt pairs)")
    list_shards(spec)  # raises when a pattern expands to missing files
    return "shards"


def shard_for_evaluation(source: str, output_dir: str, *, workers: int = 1) -> tuple[list[str], list[dict]]:
    """Write a corpus (folder of pairs or .tsv) to shards in `output_dir` with `wdsbr.shards.shard_corpus`, every
    kept input in them whatever split it would get. Returns (shard paths, rejected inputs as manifest rows).
    Raises `wdsbr.shards.ShardError` when nothing could be kept."""
    # wav: the members live only as long as the run, so skip the flac encode; both are lossless PCM-16
    options = ShardOptions(val_fraction=0.0, test_fraction=0.0, audio_format="wav", workers=max(1, workers))
    manifest = shard_corpus(open_corpus(source), output_dir, options, progress=False)
    shards = [
        str(Path(output_dir) / shard["file"]) for split in manifest["splits"].values() for shard in split["shards"]
    ]
    return shards, manifest["rejected"]


def take_samples(
    shards: list[str], count: int, output_path: str, on_problem: Callable[[str, int, str], None]
) -> list[str]:
    """The first `count` samples of `shards` in shard order, their raw members copied (not decoded) into one tar
    at `output_path`: a subset that every world size splits the same way. `on_problem(reason, samples, detail)`
    hears of a shard that could not be read (`wdsbr.streams.read_shard_range`)."""
    with wds.TarWriter(output_path, encoder=False, mtime=0) as writer:
        samples = (sample for url in shards for sample in read_shard_range(url, on_problem=on_problem))
        for sample in itertools.islice(samples, count):
            writer.write(
                {name: value for name, value in sample.items() if name == "__key__" or not name.startswith("__")}
            )
    return [output_path]


def prepare_shards(data: str, data_kind: str, workdir: str, *, max_samples: int | None, workers: int) -> dict:
    """Temporary shards in `workdir` of a corpus (`data_kind` "corpus"), or of the first `max_samples` samples:
    {shards, rejected, skipped}, or {error} when no input could be kept."""
    try:
        shards, rejected = (
            shard_for_evaluation(data, str(Path(workdir) / "corpus"), workers=workers)
            if data_kind == "corpus"
            else (list_shards(data), [])
        )
    except ShardError as error:
        return {"error": f"--data {data}: {str(error).split('; see ')[0]}"}
    counter = SkipCounter()
    if max_samples:
        shards = take_samples(
            shards,
            max_samples,
            str(Path(workdir) / "subset.tar"),
            lambda reason, samples, detail: counter.add(reason, detail, samples),
        )
    return {"shards": shards, "rejected": rejected, "skipped": counter.as_dict()}


def expected_samples(shards, world_size: int) -> int | None:
    """About how many samples rank 0 transcribes, for its progress bar; None when their counts are unknown."""
    try:
        return math.ceil(count_samples(list_shards(shards)) / world_size)
    except (ValueError, OSError, tarfile.TarError):  # a remote shard without manifest: the loader counts it
        return None

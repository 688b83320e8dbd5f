"""Where shards are and what they hold: shard lists, per-shard sample counts, and reading one range of a shard's
samples, for local paths, `http(s)://` URLs and `pipe:` commands.

* `list_shards` expands a folder, a brace pattern, a list or URLs; a spec that expands to nothing is an error.
* `shard_counts` gives every shard's sample count: from the shard tool's `manifest.json` beside the split folders
  (`shards/train/shard-000000.tar` -> `shards/manifest.json`; for `http://host/train/shard-….tar`, fetched from
  `http://host/manifest.json`), else from a local tar's headers; None when a remote shard has no manifest.
* `read_shard_range(url, first, stop)` yields the raw samples `first .. stop-1` of one shard (webdataset's own
  tar reading and key grouping). A local uncompressed tar is entered by seeking over its headers to the first
  member of sample `first`, so a reader that starts mid-shard does not read the bytes before it; a stream is read
  through. An unreadable shard (HTTP error, refused connection, missing file, timeout) and a shard shorter than
  its count are counted and named by the caller's `on_problem`; the stream then goes on with the next range.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import posixpath
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import braceexpand
import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

HTTP_TIMEOUT_SECONDS = 60  # a stalled object store fails the shard (counted), never the run
MANIFEST = "manifest.json"


def is_url(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def list_shards(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shards from a folder (its `*.tar`), a brace pattern (`shards/train/shard-{000000..000009}.tar`), a list
    of any of those, or URLs (`pipe:…`, `https://…`). A spec that expands to nothing is an error."""
    if isinstance(spec, (list, tuple)):
        shards = [shard for item in spec for shard in list_shards(item)]
    else:
        spec = str(spec)
        if is_url(spec):
            shards = list(braceexpand.braceexpand(spec))
        elif os.path.isdir(spec):
            shards = sorted(str(p) for p in Path(spec).glob("*.tar"))
            if not shards:
                raise FileNotFoundError(f"{spec}: folder has no .tar shards (write them with tools/shard_corpus.py)")
        else:
            shards = list(braceexpand.braceexpand(spec))
            missing = [s for s in shards if not os.path.isfile(s)]
            if missing:
                raise FileNotFoundError(
                    f"{missing[0]}: shard not found" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
    if not shards:
        raise FileNotFoundError(f"{spec}: no shards")
    return shards


# ------------------------------------------------------------------------------------------------- counts


def _manifest_root(shard: str) -> str:
    """The folder (or URL) above the shard's split folder, where the shard tool writes manifest.json."""
    if is_http(shard):
        url = urllib.parse.urlsplit(shard)
        return f"{url.scheme}://{url.netloc}{posixpath.dirname(posixpath.dirname(url.path)).rstrip('/')}"
    return str(Path(shard).resolve().parent.parent)


def _shard_id(shard: str) -> str:
    return shard if is_http(shard) else str(Path(shard).resolve())


def read_manifest(root: str | Path) -> dict | None:
    """The manifest.json in `root` (a folder, or an http(s) URL above the split folders); None when there is none
    or it cannot be read as JSON."""
    try:
        if is_http(str(root)):
            with urllib.request.urlopen(f"{root}/{MANIFEST}", timeout=HTTP_TIMEOUT_SECONDS) as response:
                return json.loads(response.read().decode("utf-8"))
        return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, urllib.error.URLError):
        return None


@functools.lru_cache(maxsize=64)  # one fetch per split root and process
def _manifest_rows(root: str) -> dict[str, dict]:
    """{shard id: its manifest row (samples, seconds, …)} of the manifest.json under `root`; {} when there is none."""
    manifest = read_manifest(root)
    join = (lambda file: f"{root}/{file}") if is_http(root) else (lambda file: str((Path(root) / file).resolve()))
    try:
        return {join(shard["file"]): shard for split in manifest["splits"].values() for shard in split["shards"]}
    except (KeyError, TypeError, AttributeError):  # no manifest, or not the shard tool's
        return {}


def manifest_value(shard: str, field: str) -> float | None:
    """One field of the shard's manifest row (`samples`, `seconds`); None without a manifest that lists it."""
    if is_url(shard) and not is_http(shard):
        return None
    return _manifest_rows(_manifest_root(shard)).get(_shard_id(shard), {}).get(field)


_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: members that are not sample fields
TAR_BLOCK = 512


def _member_keys(path: str) -> Iterator[tuple[str, int]]:
    """(sample key, offset of its first header) for every member webdataset turns into a sample field, in tar
    order, from the 512-byte headers alone: a seek past each member's data, no parsing beyond name, size and
    type (tarfile's full header parsing cost as much as reading 1 s clips through). A pax or GNU long-name
    header is followed (its path and size apply to the next member, whose offset is that header's, as in
    tarfile). Stops at the end-of-archive block or where the tar is cut."""
    with open(path, "rb") as stream:
        offset, start, name, size = 0, None, None, None
        while True:
            stream.seek(offset)
            header = stream.read(TAR_BLOCK)
            if len(header) < TAR_BLOCK or header == bytes(TAR_BLOCK):
                return
            if tarfile.nti(header[148:156]) not in tarfile.calc_chksums(header):
                raise tarfile.HeaderError(f"{path}: bad tar header checksum at byte {offset}")
            kind = header[156:157]
            length = size if size is not None else tarfile.nti(header[124:136])
            start = offset if start is None else start
            offset += TAR_BLOCK + -(-length // TAR_BLOCK) * TAR_BLOCK
            if kind in (b"x", b"L"):  # extended header: its payload names (and sizes) the next member
                payload = stream.read(length)
                if kind == b"L":
                    name = tarfile.nts(payload, "utf-8", "surrogateescape")
                else:
                    records = dict(re.findall(rb"\d+ ([^=]+)=(.*?)\n", payload, re.S))
                    name = records[b"path"].decode("utf-8", "surrogateescape") if b"path" in records else name
                    size = int(records[b"size"]) if b"size" in records else None
                continue
            if kind in (b"0", b"\0", b"7"):  # regular files (webdataset skips the rest)
                if name is None:
                    name = tarfile.nts(header[0:100], "utf-8", "surrogateescape")
                    prefix = (
                        tarfile.nts(header[345:500], "utf-8", "surrogateescape") if header[257:262] == b"ustar" else ""
                    )
                    name = f"{prefix}/{name}" if prefix else name
                key, _ = base_plus_ext(name)
                if key is not None and not _META.match(name):
                    yield key, start
            start, name, size = None, None, None


def _sample_offsets(path: str) -> Iterator[int]:
    """Offset of each sample's first header, in tar order (consecutive members sharing a key are one sample)."""
    previous = None
    for key, offset in _member_keys(path):
        if key != previous:
            yield offset
        previous = key


@functools.lru_cache(maxsize=4096)
def tar_count(path: str) -> int:
    """Samples in a local tar, from its headers only; a damaged tar counts the samples before the damage
    (reading it counts the damage)."""
    count = 0
    try:
        for _ in _sample_offsets(path):
            count += 1
    except (OSError, ValueError, tarfile.TarError):
        pass
    return count


def shard_counts(shards: Sequence[str]) -> list[int] | None:
    """Every shard's sample count (manifest.json, else a local tar's headers); None when a remote shard's count
    is unknown (a `pipe:` command, or a URL with no manifest.json above its split folder)."""
    counts = []
    for shard in shards:
        count = manifest_value(shard, "samples")
        if count is None and is_url(shard):
            return None
        counts.append(int(count) if count is not None else tar_count(str(Path(shard).resolve())))
    return counts


def count_samples(shards: Sequence[str]) -> int:
    """Samples in the shards; ValueError naming both ways out when a remote shard's count is unknown."""
    counts = shard_counts(shards)
    if counts is None:
        remote = next(s for s in shards if is_url(s))
        where = f"{_manifest_root(remote)}/{MANIFEST}" if is_http(remote) else "manifest.json (a pipe: has none)"
        raise ValueError(
            f"{remote}: no sample counts for remote shards: serve {where} beside the split folders "
            "(tools/shard_corpus.py writes it) or pass the epoch size (--epoch-samples)"
        )
    return sum(counts)


def count_seconds(shards: Sequence[str]) -> float | None:
    """Seconds of audio in the shards, from the shard tool's manifest.json; None when it does not list them."""
    found = [manifest_value(shard, "seconds") for shard in shards]
    return None if None in found else float(sum(found))


# ----------------------------------------------------------------------------------------------- reading


def _seek_offset(path: str, first: int) -> int | None:
    """Byte offset of the header of sample `first`'s first member in an uncompressed local tar; None when the
    tar cannot be entered that way (compressed, damaged before it: read it through instead)."""
    try:
        return next(itertools.islice(_sample_offsets(path), first, None), None)
    except (OSError, ValueError, tarfile.TarError):
        return None


def _open(url: str, offset: int):
    if is_http(url):
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS)
    if is_url(url):
        return wds.gopen(url)  # pipe: and the other schemes webdataset knows
    stream = open(url, "rb")
    stream.seek(offset)
    return stream


def read_shard_range(
    url: str,
    first: int = 0,
    stop: int | None = None,
    on_problem: Callable[[str, int, str], None] = lambda reason, samples, detail: None,
) -> Iterator[dict]:
    """Raw samples `first .. stop-1` of one shard (all from `first` when `stop` is None): dicts of `__key__`,
    `__url__` and one field per member, as webdataset groups them. Samples that could not be read are reported
    once per shard to `on_problem(reason, samples, detail)`: "unreadable_shard" (it could not be opened, or
    failed before its first sample), "corrupt_shard" (it failed mid-way: truncated, a broken member),
    "short_shard" (it ended before `stop` without an error: fewer samples than its count says). A shard read
    to its end (`stop` None) that fails mid-way reports one sample: how many it lost is unknown."""
    if stop is not None and first >= stop:
        return
    offset = None if is_url(url) or first == 0 else _seek_offset(url, first)
    to_skip = 0 if offset is not None or first == 0 else first  # read through to `first`
    got, errors = 0, []

    def note(error: Exception) -> bool:  # webdataset handler: remember, go on (the count is made below)
        errors.append(error)
        return True

    try:
        stream = _open(url, offset or 0)
    except (OSError, ValueError, urllib.error.URLError) as error:
        on_problem("unreadable_shard", (stop - first) if stop is not None else 1, f"{url}: {error}")
        return
    try:
        samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}], handler=note), handler=note)
        for index, sample in enumerate(samples):
            if index < to_skip:
                continue
            yield sample
            got += 1
            if stop is not None and got == stop - first:
                return
    finally:
        try:
            stream.close()  # a pipe: that exited non-zero raises here
        except Exception as error:  # noqa: BLE001 - whatever the command raised, it is this shard's problem
            errors.append(error)
    missing = (stop - first - got) if stop is not None else (1 if errors else 0)
    if missing > 0:
        reason = ("unreadable_shard" if not got else "corrupt_shard") if errors else "short_shard"
        cause = f" ({errors[-1]!r:.300})" if errors else ""
        span = f"samples {first}..{stop - 1}" if stop is not None else "to its end"
        on_problem(reason, missing, f"{url}: {got} read of {span}{cause}")

"""Where shards are and what they hold: shard lists, per-shard counts (manifest, tar headers, a manifest over
HTTP), and reading a range of one shard's samples (seeking into a local tar, reading a stream through),
with unreadable and short shards reported, never fatal."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import serve_folder, write_plain_shards, write_speech_corpus

from wdsbr.corpus import open_corpus
from wdsbr.shards import ShardOptions, shard_corpus
from wdsbr.streams import (
    _seek_offset,
    count_samples,
    count_seconds,
    list_shards,
    read_shard_range,
    shard_counts,
    tar_count,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The shard tool's output: 17 train samples in shards of 7, 7 and 3, and manifest.json."""
    root = tmp_path_factory.mktemp("streams")
    write_speech_corpus(root / "corpus", 17)
    shard_corpus(
        open_corpus(root / "corpus"),
        root / "shards",
        ShardOptions(val_fraction=0.0, test_fraction=0.0, samples_per_shard=7, workers=1),
        progress=False,
    )
    return root / "shards"


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> list[str]:
    return write_plain_shards(tmp_path_factory.mktemp("plain"), [5, 1, 3])


def keys(samples) -> list[str]:
    return [sample["__key__"] for sample in samples]


class Problems(list):
    def __call__(self, reason: str, samples: int, detail: str) -> None:
        self.append((reason, samples, detail))


# ------------------------------------------------------------------------------------------------ shard lists


def test_shards_from_folder_pattern_list_and_urls(written):
    train = written / "train"
    from_folder = list_shards(train)
    assert [Path(s).name for s in from_folder] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert list_shards(f"{train}/shard-{{000000..000002}}.tar") == from_folder
    assert list_shards([from_folder[0], str(train)]) == from_folder[:1] + from_folder
    assert list_shards(f"pipe:cat {train}/shard-{{000000..000001}}.tar") == [
        f"pipe:cat {train}/shard-000000.tar",
        f"pipe:cat {train}/shard-000001.tar",
    ]
    assert (
        list_shards("http://host:8000/train/shard-{000000..000002}.tar")[-1]
        == "http://host:8000/train/shard-000002.tar"
    )


def test_a_spec_that_expands_to_nothing_is_an_error(tmp_path, written):
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"shard-000003.tar: shard not found \(and 6 more\)"):
        list_shards(f"{written}/train/shard-{{000000..000009}}.tar")


# ------------------------------------------------------------------------------------------------- counts


def test_counts_come_from_the_manifest_or_from_tar_headers(tmp_path, written, plain):
    assert shard_counts(list_shards(written / "train")) == [7, 7, 3]
    assert count_samples(list_shards(written / "train")) == 17
    assert count_seconds(list_shards(written / "train")) == pytest.approx(sum(0.5 + (i % 4) * 0.25 for i in range(17)))
    assert shard_counts(plain) == [5, 1, 3] and count_seconds(plain) is None  # no manifest: headers, no seconds
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(written / "train" / "shard-000002.tar", loose)
    assert count_samples(list_shards(loose)) == 3


def test_remote_counts_come_from_the_manifest_over_http_or_the_error_names_both_ways_out(written):
    with serve_folder(written) as url:
        shards = list_shards(f"{url}/train/shard-{{000000..000002}}.tar")
        assert shard_counts(shards) == [7, 7, 3]
        assert count_seconds(shards) == pytest.approx(count_seconds(list_shards(written / "train")))
    with serve_folder(written / "train") as url:  # the split folder alone: no manifest above it
        shards = [f"{url}/shard-000000.tar"]
        assert shard_counts(shards) is None
        with pytest.raises(
            ValueError,
            match=r"serve http://127.0.0.1:\d+/manifest.json .* or pass the epoch size "
            r"\(--epoch-samples\)",
        ):
            count_samples(shards)
    with pytest.raises(ValueError, match="a pipe: has none"):
        count_samples([f"pipe:cat {written}/train/shard-000000.tar"])


def test_a_tar_count_groups_members_by_key_like_webdataset(plain):
    assert [tar_count(path) for path in plain] == [5, 1, 3]
    assert len(list(read_shard_range(plain[0]))) == 5


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("first, stop", [(0, 5), (2, 5), (4, 5), (1, 3)])
def test_a_range_read_by_seeking_equals_the_same_range_read_through(plain, first, stop):
    everything = keys(read_shard_range(plain[0]))
    assert everything == [f"s0_{i:03d}" for i in range(5)]
    assert keys(read_shard_range(plain[0], first, stop)) == everything[first:stop]
    assert keys(read_shard_range(f"pipe:cat {plain[0]}", first, stop)) == everything[first:stop]  # read through
    sample = next(read_shard_range(plain[0], first, stop))
    assert set(sample) == {"__key__", "__url__", "wav", "txt"} and sample["__url__"] == plain[0]


def test_seeking_starts_at_the_samples_first_header_so_the_bytes_before_it_are_not_read(plain):
    with tarfile.open(plain[0]) as tar:  # tarfile's own offsets (a pax header's, where the member has one)
        firsts = {}
        for member in tar:
            firsts.setdefault(member.name.split(".")[0], member.offset)
    assert [_seek_offset(plain[0], i) for i in range(5)] == list(firsts.values())
    assert _seek_offset(plain[0], 5) is None


def test_a_compressed_or_long_named_tar_is_read_right_from_any_sample(tmp_path, plain):
    gz = tmp_path / "shard.tar.gz"
    gz.write_bytes(gzip.compress(Path(plain[0]).read_bytes()))
    assert _seek_offset(str(gz), 2) is None  # cannot be entered: read through
    assert keys(read_shard_range(str(gz), 2, 5)) == [f"s0_{i:03d}" for i in range(2, 5)]
    long = tmp_path / "long.tar"
    with tarfile.open(long, "w", format=tarfile.GNU_FORMAT) as tar:  # names over 100 bytes: GNU long-name headers
        for i in range(4):
            for ext in ("txt", "wav"):
                info = tarfile.TarInfo(f"{'d' * 120}/k{i}.{ext}")
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))
    assert tar_count(str(long)) == 4
    assert _seek_offset(str(long), 2) is not None
    assert keys(read_shard_range(str(long), 2, 4)) == [f"{'d' * 120}/k2", f"{'d' * 120}/k3"]


def test_a_shard_shorter_than_its_count_and_a_truncated_one_are_reported_with_what_was_lost(tmp_path, plain):
    problems = Problems()
    assert len(list(read_shard_range(plain[2], 0, 5, on_problem=problems))) == 3
    assert problems == [("short_shard", 2, f"{plain[2]}: 3 read of samples 0..4")]
    cut = tmp_path / "cut.tar"
    data = Path(plain[0]).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    problems.clear()
    got = keys(read_shard_range(str(cut), 0, 5, on_problem=problems))
    assert 1 <= len(got) < 5
    [(reason, lost, detail)] = problems
    assert (
        reason == "corrupt_shard"
        and lost == 5 - len(got)
        and detail.startswith(f"{cut}: {len(got)} read of samples 0..4 (")
    )


def test_an_unreadable_shard_is_reported_and_the_reader_goes_on(tmp_path, written):
    problems = Problems()
    assert list(read_shard_range(str(tmp_path / "gone.tar"), 0, 4, on_problem=problems)) == []
    assert problems[0][:2] == ("unreadable_shard", 4) and "gone.tar" in problems[0][2]
    with serve_folder(written, missing={"train/shard-000001.tar"}) as url:
        problems.clear()
        assert list(read_shard_range(f"{url}/train/shard-000001.tar", 0, 7, on_problem=problems)) == []
        assert problems[0][:2] == ("unreadable_shard", 7) and "404" in problems[0][2]
        assert len(list(read_shard_range(f"{url}/train/shard-000000.tar", 3, 7, on_problem=problems))) == 4
    problems.clear()
    assert list(read_shard_range("http://127.0.0.1:9/train/shard-000000.tar", 0, 2, on_problem=problems)) == []
    assert problems[0][:2] == ("unreadable_shard", 2) and "refused" in problems[0][2].lower()

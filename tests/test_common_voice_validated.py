"""`--cv-train validated`: train on Common Voice's validated.tsv, never on a dev/test speaker or sentence.

A small release is built here: dev.tsv and test.tsv as released, validated.tsv holding them plus train
candidates that share a speaker, the exact sentence, or the sentence up to case and punctuation with them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from wdsbr.corpus import CorpusError, Item, Rejection, open_corpus
from wdsbr.shards import SPLITS, ShardOptions, shard_corpus

REPO = Path(__file__).resolve().parents[1]
HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment\n"
DEV = [("spk-d1", "cv_br_d1.mp3", "Demat deoc'h."), ("spk-d2", "cv_br_d2.mp3", "Mont a ran d'ar skol.")]
TEST = [("spk-t1", "cv_br_t1.mp3", "Kenavo ar c'hentañ!"), ("spk-t1", "cv_br_t2.wav", "Petra a fell deoc'h ?")]
CANDIDATES = [  # validated.tsv rows that are in neither dev.tsv nor test.tsv
    ("spk-a", "cv_br_a1.mp3", "Bara ha chistr."),  # kept
    ("spk-a", "cv_br_a2.wav", "Ar mor a zo brav hiziv."),  # kept
    ("spk-b", "cv_br_b1.mp3", "Un ti bihan."),  # kept
    ("spk-d1", "cv_br_x1.mp3", "Ur frazenn nevez."),  # speaker of dev
    ("spk-t1", "cv_br_x2.mp3", "Demat deoc'h."),  # speaker of test (checked before the sentence)
    ("spk-c", "cv_br_x3.mp3", "Demat deoc'h."),  # exact sentence of dev
    ("spk-e", "cv_br_x4.mp3", "kenavo ar c’hentañ"),  # test's sentence after clean_text
    ("", "cv_br_x5.mp3", "Petra a fell deoc'h?"),  # no client_id; test's sentence after clean_text
    ("spk-f", "cv_br_gone.mp3", "Ur restr kollet."),  # its clip is missing
]


def write_clip(path: Path, seconds: float, seed: int) -> None:
    """48 kHz like Common Voice: MP3 (or WAV for a few), noise bursts so every clip differs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * 48_000))).astype(np.float32)
    sf.write(path, audio, 48_000, format="MP3" if path.suffix == ".mp3" else "WAV")


def tsv(rows) -> str:
    return HEADER + "".join(f"{client}\t{clip}\t{text}\t2\t0\t\t\t\t\tbr\t\n" for client, clip, text in rows)


def write_release(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dev.tsv").write_text(tsv(DEV), encoding="utf-8")
    (root / "test.tsv").write_text(tsv(TEST), encoding="utf-8")
    # validated.tsv lists the dev and test clips too, as Common Voice's does
    (root / "validated.tsv").write_text(
        tsv(CANDIDATES[:4] + DEV[:1] + CANDIDATES[4:] + TEST + DEV[1:]), encoding="utf-8"
    )
    (root / "train.tsv").write_text(tsv(CANDIDATES[:2]), encoding="utf-8")
    for index, (_, clip, _) in enumerate(DEV + TEST + CANDIDATES):
        if "gone" not in clip:
            write_clip(root / "clips" / clip, 0.5 + 0.1 * index, seed=index)
    return root


def test_validated_minus_dev_test_speakers_and_sentences_is_the_train_split(tmp_path):
    corpus = open_corpus(write_release(tmp_path / "br"), cv_train="validated")
    items = {entry.source: entry for entry in corpus.entries if isinstance(entry, Item)}
    rejections = {entry.source: entry for entry in corpus.entries if isinstance(entry, Rejection)}
    assert {source: item.split for source, item in items.items()} == {
        "clips/cv_br_a1.mp3": "train",
        "clips/cv_br_a2.wav": "train",
        "clips/cv_br_b1.mp3": "train",
        "clips/cv_br_d1.mp3": "validation",
        "clips/cv_br_d2.mp3": "validation",
        "clips/cv_br_t1.mp3": "test",
        "clips/cv_br_t2.wav": "test",
    }
    assert {source: (r.reason, r.detail) for source, r in rejections.items()} == {
        "clips/cv_br_x1.mp3": ("cv_speaker_in_dev_test", "validated.tsv line 5: speaker spk-d1 also speaks in dev.tsv"),
        "clips/cv_br_x2.mp3": (
            "cv_speaker_in_dev_test",
            "validated.tsv line 7: speaker spk-t1 also speaks in test.tsv",
        ),
        "clips/cv_br_x3.mp3": (
            "cv_sentence_in_dev_test",
            'validated.tsv line 8: sentence "Demat deoc\'h." is in dev.tsv (exact text)',
        ),
        "clips/cv_br_x4.mp3": (
            "cv_sentence_in_dev_test",
            "validated.tsv line 9: sentence 'kenavo ar c’hentañ' is in test.tsv (equal after clean_text)",
        ),
        "clips/cv_br_x5.mp3": (
            "cv_sentence_in_dev_test",
            'validated.tsv line 10: sentence "Petra a fell deoc\'h?" is in test.tsv (equal after clean_text)',
        ),
        "clips/cv_br_gone.mp3": ("missing_file", "validated.tsv line 11: clips/cv_br_gone.mp3 does not exist"),
    }
    # the 4 validated.tsv rows of dev/test clips are those clips' dev/test inputs, not second ones
    assert corpus.total == len(items) + len(rejections) == 7 + 6
    assert corpus.description["cv_train"] == {
        "train_from": "validated.tsv",
        "held_out": ["dev.tsv", "test.tsv"],
        "sentence_match": "exact text, or equal after wdsbr.text.clean_text",
        "excluded_from_train": {"cv_speaker_in_dev_test": 2, "cv_sentence_in_dev_test": 3},
        "validated_rows_of_dev_test_clips": 4,
    }


def test_shards_from_validated_prove_zero_speaker_and_sentence_overlap(tmp_path):
    root = write_release(tmp_path / "br")
    manifest = shard_corpus(
        open_corpus(root, cv_train="validated"),
        tmp_path / "shards",
        ShardOptions(samples_per_shard=2, workers=2),
        progress=False,
    )
    splits = manifest["splits"]
    assert [splits[split]["samples"] for split in SPLITS] == [3, 2, 2]  # dev and test exactly as released
    assert [splits[split]["speakers"] for split in SPLITS] == [2, 2, 1]
    for split in SPLITS:  # hours per split, from the decoded 16 kHz audio
        assert (
            splits[split]["hours"] == pytest.approx(splits[split]["seconds"] / 3600, abs=1e-6)
            and splits[split]["hours"] > 0
        )
    assert manifest["overlap"]["speakers"] == 0 and manifest["overlap"]["sentences"] == 0
    counts = manifest["counts"]
    assert counts["kept"] + counts["rejected"] == counts["found"] == 13
    assert counts["rejected_by_reason"] == {
        "cv_sentence_in_dev_test": 3,
        "cv_speaker_in_dev_test": 2,
        "missing_file": 1,
    }
    assert manifest["source"]["cv_train"]["excluded_from_train"] == {
        "cv_speaker_in_dev_test": 2,
        "cv_sentence_in_dev_test": 3,
    }

    import webdataset as wds

    def written(split):
        urls = [str(tmp_path / "shards" / shard["file"]) for shard in splits[split]["shards"]]
        return {
            s["__key__"]: (s["txt"].decode(), json.loads(s["json"])) for s in wds.WebDataset(urls, shardshuffle=False)
        }

    assert {key: text for key, (text, _) in written("test").items()} == {
        "cv_br_t1": "Kenavo ar c'hentañ!",
        "cv_br_t2": "Petra a fell deoc'h ?",
    }
    train = written("train")
    assert set(train) == {"cv_br_a1", "cv_br_a2", "cv_br_b1"}
    assert all(meta["sample_rate_in"] == 48_000 for _, meta in train.values())  # mp3 and wav, resampled


def test_the_overlap_count_catches_a_release_whose_train_shares_speakers_and_sentences(tmp_path):
    """The same counter on train.tsv as released: here it holds a dev speaker and a test sentence."""
    root = write_release(tmp_path / "br")
    (root / "train.tsv").write_text(tsv([CANDIDATES[0], CANDIDATES[3], CANDIDATES[6]]), encoding="utf-8")
    manifest = shard_corpus(open_corpus(root), tmp_path / "shards", ShardOptions(workers=1), progress=False)
    assert "cv_train" not in manifest["source"]  # train.tsv as released: nothing excluded
    assert manifest["overlap"]["speakers"] == 1 and manifest["overlap"]["sentences"] == 1


def test_validated_needs_a_common_voice_release_with_validated_tsv(tmp_path):
    root = write_release(tmp_path / "br")
    with pytest.raises(CorpusError, match="--cv-train validated: .* is not a Common Voice release folder"):
        open_corpus(tmp_path / "br" / "clips", cv_train="validated")
    (root / "validated.tsv").unlink()
    with pytest.raises(CorpusError, match=r"--cv-train validated: .*validated.tsv does not exist"):
        open_corpus(root, cv_train="validated")


def test_shard_tool_cv_train_validated(tmp_path):
    root = write_release(tmp_path / "br")
    command = [
        sys.executable,
        "tools/shard_corpus.py",
        str(root),
        str(tmp_path / "out"),
        "--cv-train",
        "validated",
        "--workers",
        "1",
        "--no-progress",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (
        "kept 7 of 13 inputs; rejected 6 (cv_sentence_in_dev_test 3, cv_speaker_in_dev_test 2, missing_file 1)"
        in result.stdout
    )
    assert "train shares 0 speakers and 0 sentences with validation+test" in result.stdout

    plain = tmp_path / "plain"
    (plain / "a").mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "tools/shard_corpus.py", str(plain), str(tmp_path / "out2"), "--cv-train", "validated"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --cv-train validated: ") and result.stderr.count("\n") == 1

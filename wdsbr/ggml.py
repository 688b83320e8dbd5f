"""Export to whisper.cpp: the legacy ggml file its `whisper_init_from_file` loads, written from a Hugging Face folder.

Layout (little-endian; what whisper.cpp's `whisper_model_load` reads, written from that description):

    int32 magic 0x67676d6c ("ggml")
    11 × int32 hparams: n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
                        n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype (0 f32, 1 f16)
    int32 n_mel, int32 n_fft (201); n_mel × n_fft float32: the mel filter bank (the feature extractor's slaney
          filters, transposed: whisper.cpp computes the log-mel from PCM itself with them)
    int32 n_tokens; per token in id order: int32 length + its bytes (byte-level BPE decoded); the special tokens
          are not written: whisper.cpp numbers them from n_vocab as the real vocabularies do
    per tensor: int32 n_dims, int32 name length, int32 type (0 f32, 1 f16); n_dims × int32 dims, innermost
          first (the numpy shape reversed); the name (openai's: `encoder.blocks.0.attn.query.weight`); the data

Renames follow openai's checkpoint names (`q_proj` → `attn.query`, `fc1` → `mlp.0`, …); with ftype f16 the 2-D
weights are float16 and every 1-D tensor, the convolution biases (stored [n, 1]) and the positional embeddings
float32; with f32 every tensor is float32 (whisper.cpp's own converter's `use-f32`; the whisper.cpp that
pywhispercpp 1.5.1 bundles refuses it: its CPU convolution asserts float16 kernels, so f16 is the default);
`proj_out` is not written (whisper.cpp ties it to the token embedding, as Whisper does).
`read_ggml` reads the same layout back (tests round-trip through it).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wdsbr.model import load_model, load_processor

MAGIC = 0x67676D6C
HPARAMS = (
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
    "ftype",
)
FTYPES = {"f32": 0, "f16": 1}
RENAMES = {
    "self_attn.k_proj": "attn.key",
    "self_attn.q_proj": "attn.query",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
TOP_RENAMES = {
    "encoder.layer_norm.weight": "encoder.ln_post.weight",
    "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.layer_norm.weight": "decoder.ln.weight",
    "decoder.layer_norm.bias": "decoder.ln.bias",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}
KEEP_F32 = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}


def ggml_name(name: str) -> str | None:
    """openai's name of a transformers Whisper tensor (`model.encoder.layers.0.self_attn.q_proj.weight` →
    `encoder.blocks.0.attn.query.weight`); None for `proj_out.weight` (tied, not written)."""
    if name == "proj_out.weight":
        return None
    name = name.removeprefix("model.")
    if name in TOP_RENAMES:
        return TOP_RENAMES[name]
    parts = name.split(".")
    if len(parts) > 3 and parts[1] == "layers":
        layer, leaf = ".".join(parts[3:-1]), parts[-1]
        return ".".join([parts[0], "blocks", parts[2], RENAMES.get(layer, layer), leaf])
    return name


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character each byte is written as → the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars)}


def token_bytes(tokenizer) -> list[bytes]:
    """Every text token's bytes in id order (the ids below `<|endoftext|>`: the special tokens are not written)."""
    decoder = _byte_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(tokenizer.convert_tokens_to_ids("<|endoftext|>"))))
    try:
        return [bytes(decoder[char] for char in piece) for piece in pieces]
    except KeyError as error:
        raise ValueError(f"the tokenizer is not a byte-level BPE as Whisper's: token character {error}") from None


def write_ggml(model, feature_extractor, tokenizer, path: Path, ftype: str = "f16") -> None:
    """The ggml file of a transformers Whisper (see the module's docstring)."""
    config = model.config
    filters = np.asarray(feature_extractor.mel_filters, dtype=np.float32).T  # (n_fft, n_mels) → (n_mels, n_fft)
    if filters.shape != (config.num_mel_bins, feature_extractor.n_fft // 2 + 1):
        raise ValueError(f"mel filters of shape {filters.shape} do not match {config.num_mel_bins} mel bins")
    tokens = token_bytes(tokenizer)
    hparams = [
        config.vocab_size,
        config.max_source_positions,
        config.d_model,
        config.encoder_attention_heads,
        config.encoder_layers,
        config.max_target_positions,
        config.d_model,
        config.decoder_attention_heads,
        config.decoder_layers,
        config.num_mel_bins,
        FTYPES[ftype],
    ]
    with open(path, "wb") as out:
        out.write(struct.pack("<i", MAGIC))
        out.write(struct.pack("<11i", *hparams))
        out.write(struct.pack("<ii", *filters.shape))
        out.write(filters.astype("<f4").tobytes())
        out.write(struct.pack("<i", len(tokens)))
        for token in tokens:
            out.write(struct.pack("<i", len(token)))
            out.write(token)
        for source, tensor in model.state_dict().items():
            name = ggml_name(source)
            if name is None:
                continue
            data = tensor.detach().to("cpu").float().numpy()
            data = data.squeeze() if data.ndim > 1 else data
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)
            half = ftype == "f16" and data.ndim >= 2 and name not in KEEP_F32
            data = np.ascontiguousarray(data, dtype="<f2" if half else "<f4")
            encoded = name.encode("utf-8")
            out.write(struct.pack("<iii", data.ndim, len(encoded), int(half)))
            out.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))
            out.write(encoded)
            out.write(data.tobytes())


@dataclass
class GgmlModel:
    hparams: dict[str, int]
    filters: np.ndarray
    tokens: list[bytes]
    tensors: dict[str, np.ndarray]


def read_ggml(path: str | Path) -> GgmlModel:
    """A ggml Whisper file back into numpy (the layout above); one clear error when it is not one."""
    data = Path(path).read_bytes()
    at = 0

    def take(fmt: str):
        nonlocal at
        size = struct.calcsize(fmt)
        if at + size > len(data):
            raise ValueError(f"{path}: truncated ggml file (ends at byte {len(data)})")
        values = struct.unpack_from(fmt, data, at)
        at += size
        return values

    (magic,) = take("<i")
    if magic != MAGIC:
        raise ValueError(f"{path}: not a ggml Whisper file (magic {magic:#x}, expected {MAGIC:#x})")
    hparams = dict(zip(HPARAMS, take("<11i")))
    n_mel, n_fft = take("<ii")
    filters = np.frombuffer(data, "<f4", n_mel * n_fft, at).reshape(n_mel, n_fft)
    at += 4 * n_mel * n_fft
    (count,) = take("<i")
    tokens = []
    for _ in range(count):
        (length,) = take("<i")
        tokens.append(data[at : at + length])
        at += length
    tensors = {}
    while at < len(data):
        dims, name_length, kind = take("<iii")
        shape = tuple(reversed(take(f"<{dims}i")))
        name = data[at : at + name_length].decode("utf-8")
        at += name_length
        dtype = "<f2" if kind == 1 else "<f4"
        size = int(np.prod(shape))
        tensors[name] = np.frombuffer(data, dtype, size, at).reshape(shape)
        at += size * np.dtype(dtype).itemsize
    return GgmlModel(hparams, filters, tokens, tensors)


def export_ggml(model_dir: str | Path, output: str | Path, ftype: str = "f16", *, overwrite: bool = False) -> dict:
    """Convert a Whisper folder to `output` (a ggml file), atomically (a temporary sibling renamed into place)."""
    output = Path(output).expanduser()
    if ftype not in FTYPES:
        raise ValueError(f"--ftype {ftype}: use f16 or f32")
    if output.exists() and not overwrite:
        raise ValueError(f"--output {output}: already exists (pass --overwrite to replace it)")
    model = load_model(str(model_dir))
    processor = load_processor(str(model_dir), None)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    try:
        write_ggml(model, processor.feature_extractor, processor.tokenizer, temporary, ftype)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(f"could not write {output}: {error}") from error
    os.replace(temporary, output)
    info = {"output": str(output), "ftype": ftype, "bytes": output.stat().st_size, "source": str(model_dir)}
    Path(f"{output}.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info

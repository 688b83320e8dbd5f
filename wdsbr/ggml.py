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

Scoring (`launch/evaluate.py --engine whisper.cpp`, `launch/train.py --export ggml`): whisper.cpp through
pywhispercpp, decoding as validation's `generate()` does (`whisper_cpp_params`): the language forced, greedy or the
same beams, no timestamps, one segment, no previous-text context, one temperature (no fallback), no entropy or
no-speech rule, the same new-token limit, blank and (when the model's generation config suppresses tokens)
non-speech tokens suppressed. The references are tokenized with the source model's tokenizer, found beside the file
(`tokenizer.json`) or from `FILE.json`'s `source` (export_ggml records it).
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wdsbr.export import require_export_extra, score_on_shards
from wdsbr.model import load_model, load_processor
from wdsbr.scoring import Prediction

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
MULTILINGUAL_VOCAB = 51865  # whisper.cpp calls a vocabulary of this many tokens or more multilingual
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


def special_ids(n_vocab: int) -> dict[str, int]:
    """Where whisper.cpp puts the special tokens of a vocabulary of `n_vocab` (it does not read them from the file):
    GPT-2's `<|endoftext|>` first, one more for a multilingual vocabulary (51,865 tokens and up), and the task and
    timestamp tokens after however many language tokens there are."""
    multilingual = n_vocab >= MULTILINGUAL_VOCAB
    shift = (n_vocab - 51765 - int(multilingual)) - 98 if multilingual else 0  # languages past base's 99, less 1
    return {
        "<|endoftext|>": 50256 + int(multilingual),
        "<|startoftranscript|>": 50257 + int(multilingual),
        "<|transcribe|>": 50358 + shift,
        "<|notimestamps|>": 50362 + shift,
    }


def check_vocabulary(tokenizer, n_vocab: int) -> None:
    """Refuse a vocabulary whose special tokens are not where whisper.cpp numbers them (a tiny test tokenizer, a
    resized vocabulary): whisper.cpp would decode nonsense or crash on it."""
    for token, expected in special_ids(n_vocab).items():
        found = tokenizer.convert_tokens_to_ids(token)
        if found != expected:
            raise ValueError(
                f"the vocabulary ({n_vocab} tokens) is not laid out as whisper.cpp numbers it: {token} is id "
                f"{found}, whisper.cpp takes it to be {expected}"
            )


def check_ggml_source(model_dir: str | Path) -> None:
    """Before training with --export ggml: the model's vocabulary suits whisper.cpp (check_vocabulary)."""
    from transformers import AutoConfig

    check_vocabulary(
        load_processor(str(model_dir), None).tokenizer, AutoConfig.from_pretrained(str(model_dir)).vocab_size
    )


def write_ggml(model, feature_extractor, tokenizer, path: Path, ftype: str = "f16") -> None:
    """The ggml file of a transformers Whisper (see the module's docstring)."""
    config = model.config
    check_vocabulary(tokenizer, config.vocab_size)
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
    check_ggml_source(model_dir)  # before the weights are read
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
    source = Path(model_dir).expanduser()
    info = {
        "output": str(output),
        "ftype": ftype,
        "bytes": output.stat().st_size,
        "source": str(source.resolve()) if source.is_dir() else str(model_dir),  # a hub id stays one
    }
    Path(f"{output}.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


# ------------------------------------------------------------------------------------------------- whisper.cpp
def read_hparams(path: str | Path) -> dict[str, int] | None:
    """The hyper-parameters of a ggml Whisper file (its first 48 bytes), or None when it is not one."""
    try:
        with open(path, "rb") as file:
            head = file.read(48)
    except OSError:
        return None
    if len(head) < 48 or struct.unpack("<i", head[:4])[0] != MAGIC:
        return None
    return dict(zip(HPARAMS, struct.unpack("<11i", head[4:])))


def is_ggml_file(path: str | Path) -> bool:
    return Path(path).is_file() and read_hparams(path) is not None


def tokenizer_folder(path: str | Path) -> str:
    """Where the references' tokenizer of a ggml file is: its own folder when it holds the source's tokenizer
    files, else the `source` its FILE.json names (tools/export.py --to ggml writes it)."""
    path = Path(path)
    if (path.parent / "tokenizer.json").is_file() and (path.parent / "tokenizer_config.json").is_file():
        return str(path.parent)
    record = Path(f"{path}.json")
    source = json.loads(record.read_text(encoding="utf-8")).get("source") if record.is_file() else None
    if source is None:
        raise ValueError(
            f"{path}: no tokenizer for the references: neither tokenizer.json beside it nor {record.name} naming "
            "the model it was exported from (export it with tools/export.py --to ggml)"
        )
    if Path(source).is_dir() and not (Path(source) / "tokenizer.json").is_file():
        raise ValueError(f"{path}: its source {source} (from {record.name}) holds no tokenizer.json")
    if not Path(source).is_dir() and Path(source).is_absolute():
        raise ValueError(f"{path}: its source {source} (from {record.name}) is gone; export it again")
    return source


def whisper_cpp_params(
    language: str | None, num_beams: int, max_new_tokens: int, suppress_non_speech: bool, threads: int = 0
) -> dict[str, Any]:
    """pywhispercpp `Model` parameters equal to validation's `generate()` (the module's docstring): whisper.cpp's
    defaults differ in a temperature fallback (0.2 steps) driven by entropy and log-prob thresholds, a no-speech
    rule, timestamps, the previous window's text as context, and no new-token limit."""
    params: dict[str, Any] = dict(
        language=language or "en",  # an English-only model ignores it
        translate=False,
        no_timestamps=True,
        single_segment=True,
        no_context=True,
        temperature=0.0,
        temperature_inc=0.0,
        entropy_thold=0.0,  # a decode fails when its entropy is below this: never
        logprob_thold=-1e9,
        no_speech_thold=1.0,
        max_tokens=max_new_tokens,
        suppress_blank=True,
        suppress_nst=suppress_non_speech,
        print_progress=False,
        print_realtime=False,
        print_timestamps=False,
    )
    if threads > 0:
        params["n_threads"] = threads
    if num_beams > 1:
        params["beam_search"] = {"beam_size": num_beams, "patience": -1.0}
    return params


def open_whisper_cpp(
    path: str | Path, language: str | None, num_beams: int, max_new_tokens: int, threads: int = 0
) -> dict[str, Any]:
    """What scoring a ggml file needs, for evaluate.py --engine whisper.cpp and --export ggml alike (the shape of
    wdsbr.export.open_for_scoring's): the model, the references' tokenizer, the language it decodes (None for an
    English-only model), its mel bins and the transcribe() arguments."""
    require_export_extra()
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort ends the process: its gdb backtrace can hang instead
    from pywhispercpp.model import Model
    from transformers import GenerationConfig

    hparams = read_hparams(path)
    if hparams is None:
        raise ValueError(f"{path}: not a ggml Whisper file (make one with tools/export.py --to ggml)")
    source = tokenizer_folder(path)
    multilingual = hparams["n_vocab"] >= MULTILINGUAL_VOCAB
    language = language if multilingual else None
    tokenizer = load_processor(source, language).tokenizer
    try:
        suppress = bool(GenerationConfig.from_pretrained(source).suppress_tokens)
    except OSError:
        suppress = False
    params = whisper_cpp_params(language, num_beams, max_new_tokens, suppress, threads)
    model = Model(str(path), params_sampling_strategy=int(num_beams > 1), redirect_whispercpp_logs_to=None, **params)
    ftype = {code: name for name, code in FTYPES.items()}.get(hparams["ftype"] % 1000, f"ftype {hparams['ftype']}")
    return {
        "model": model,
        "tokenizer": tokenizer,
        "language": language,
        "n_mels": hparams["n_mels"],
        "ftype": ftype,
        "kwargs": {},
    }


def run_whisper_cpp(model, loader, kwargs: dict[str, Any]) -> tuple[list[Prediction], float]:
    """This rank's share of an evaluation loader (`keep_audio` batches) transcribed by whisper.cpp, one clip at a
    time: (predictions, seconds)."""
    start = time.perf_counter()
    results: list[Prediction] = []
    for batch in loader:
        for key, reference, clip in zip(batch["keys"], batch["texts"], batch["audio"], strict=True):
            segments = model.transcribe(np.ascontiguousarray(clip, dtype=np.float32), **kwargs)
            results.append(Prediction(key, reference, " ".join(s.text.strip() for s in segments).strip()))
    return results, time.perf_counter() - start


def export_ggml_and_score(
    best: str | Path,
    output: str | Path,
    shards,
    *,
    language: str | None,
    normalizer: str,
    num_beams: int,
    max_new_tokens: int,
    batch_size: int,
    num_workers: int,
    ftype: str = "f16",
    threads: int = 0,
) -> dict:
    """The end of `launch/train.py --export ggml` (rank 0): best/ written as a ggml file at `output`, then the
    validation shards transcribed by whisper.cpp as `evaluate.py --engine whisper.cpp` does."""
    export_ggml(best, output, ftype, overwrite=True)
    engine = open_whisper_cpp(output, language, num_beams, max_new_tokens, threads)
    return {
        "format": "ggml",
        "path": str(output),
        "ftype": ftype,
        "engine": "whisper.cpp",
        **score_on_shards(engine, run_whisper_cpp, shards, normalizer, batch_size, num_workers),
    }

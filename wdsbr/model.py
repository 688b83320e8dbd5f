"""Whisper model and processor: load them from the hub or a local folder, the decoder prompt for a language,
and a tiny randomly-initialised Whisper built locally (tests, the offline demo, benchmarks).

The loading code is the one users run (`from_pretrained("openai/whisper-small")`); tests point it at local
folders because nothing can be downloaded here.
"""

from __future__ import annotations

import json
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlparse

import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

from wdsbr.lora import ADAPTER_FOLDER, is_lora, merged_state_dict, save_adapter

TASK = "transcribe"
HUB_TIMEOUT_SECONDS = 5.0  # one short look at the hub before transformers' own retries (minutes when offline)
# A local model folder needs all of these (any one name of each) to load as model + processor.
MODEL_FILES = {
    "config.json": ("config.json",),
    "weights": (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ),
    "tokenizer": ("tokenizer.json", "vocab.json"),
    "feature extractor config": ("preprocessor_config.json", "processor_config.json"),
}
# Whisper's special tokens, in the order (and so with the id offsets) the real tokenizers have them.
_N_TIMESTAMPS = 1501  # <|0.00|> … <|30.00|> in steps of 0.02 s


def quiet_libraries() -> None:
    """Keep the run's own lines readable: transformers' per-call generate() advice and weight-loading bars (ours
    are the only ones), and DeepSpeed's FutureWarnings about torch.distributed (theirs to fix, not the user's)."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def language_code(language: str) -> str:
    """`br`, `BR` or `breton` -> `br`; raises ValueError listing nothing long for an unknown language."""
    code = language.lower()
    code = TO_LANGUAGE_CODE.get(code, code)
    if code not in LANGUAGES:
        raise ValueError(
            f"unknown language {language!r}: Whisper knows codes like br, cy, fr, en (see LANGUAGES in transformers)"
        )
    return code


def is_multilingual(model_name_or_path: str, generation_config: GenerationConfig | None = None) -> bool:
    """English-only checkpoints (`*.en`) have no language token in their prompt."""
    if generation_config is not None and getattr(generation_config, "is_multilingual", None) is not None:
        return bool(generation_config.is_multilingual)
    return not str(model_name_or_path).rstrip("/").endswith(".en")


def check_model(model: str, language: str | None, *, load: bool = True) -> None:
    """`--model` must load as model + processor: a local folder holding all of `MODEL_FILES`, or a hub id that is
    in the local Hugging Face cache or reachable now. Raises FileNotFoundError with one line saying what was
    tried and how to fix it; a hub that cannot be reached fails within `HUB_TIMEOUT_SECONDS`, not minutes.
    `load=False` does only the local checks (no network): for when other options are wrong already."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [what for what, names in MODEL_FILES.items() if not any((path / name).is_file() for name in names)]
        if missing:
            raise FileNotFoundError(
                f"{model}: incomplete model folder, no {' and no '.join(missing)} "
                "(save the model and its WhisperProcessor together with save_pretrained)"
            )
    elif path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise FileNotFoundError(f"{model}: no such model folder")
    if not load:
        return
    if not path.is_dir() and not isinstance(try_to_load_from_cache(model, "preprocessor_config.json"), str):
        problem = hub_problem()
        if problem:
            raise FileNotFoundError(
                f"{model}: not a local folder, not in the Hugging Face cache "
                f"({hub_constants.HF_HUB_CACHE}), and {problem}: download it where there is network "
                f"(huggingface-cli download {model}) or point --model at a local folder"
            )
    try:
        load_processor(model, language)
    except OSError as error:
        raise FileNotFoundError(
            f"{model}: not a local folder, and not loadable from the Hugging Face hub "
            f"({str(error).splitlines()[0].split('. ')[0]})"
        ) from None


def hub_problem(timeout: float = HUB_TIMEOUT_SECONDS) -> str | None:
    """Why the Hugging Face hub cannot be used now (HF_HUB_OFFLINE, or no TCP connection to its endpoint within
    `timeout`), or None. One connection attempt, in a thread so a slow name lookup cannot stall it either."""
    if hub_constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(hub_constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}:{port} cannot be reached ({error.strerror or error})")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout + 1)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout:.0f} s"


def load_processor(model_name_or_path: str, language: str | None = "br", **hub_kwargs) -> WhisperProcessor:
    """Feature extractor + tokenizer, with the tokenizer's prefix set to <|lang|><|transcribe|><|notimestamps|>
    (no language or task token for English-only checkpoints)."""
    processor = WhisperProcessor.from_pretrained(model_name_or_path, **hub_kwargs)
    set_prompt(
        processor.tokenizer, model_name_or_path, language, _load_generation_config(model_name_or_path, **hub_kwargs)
    )
    return processor


def set_prompt(
    tokenizer: WhisperTokenizer,
    model_name_or_path: str,
    language: str | None,
    generation_config: GenerationConfig | None = None,
) -> list[int]:
    """Set the tokenizer's prefix tokens for training labels; returns them (starting with <|startoftranscript|>)."""
    if is_multilingual(model_name_or_path, generation_config):
        code = language_code(language) if language else None
        if code is not None and f"<|{code}|>" not in tokenizer.get_vocab():
            raise ValueError(f"tokenizer of {model_name_or_path} has no token <|{code}|> for language {language!r}")
        tokenizer.set_prefix_tokens(language=code, task=TASK, predict_timestamps=False)
    else:
        tokenizer.set_prefix_tokens(language=None, task=None, predict_timestamps=False)
    return list(tokenizer.prefix_tokens)


def _load_generation_config(model_name_or_path: str, **hub_kwargs) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(model_name_or_path, **hub_kwargs)
    except (OSError, ValueError):
        return None


def load_model(model_name_or_path: str, **hub_kwargs) -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration.from_pretrained(model_name_or_path, **hub_kwargs)


def build_tiny_whisper(
    output_dir: str | Path,
    texts: list[str] | None = None,
    *,
    n_mels: int = 80,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 400,
    multilingual: bool = True,
    seed: int = 0,
    full_vocabulary: bool = False,
) -> Path:
    """Write a tiny randomly-initialised Whisper (model, tokenizer, feature extractor, generation config) to
    `output_dir`, loadable with `from_pretrained`. The tokenizer is a byte-level BPE trained on `texts` plus
    Whisper's special tokens in their real order, so prompts, generate() and pipeline() behave as with a real
    checkpoint. `max_source_positions=1500` so real 3000-frame features pass through. `full_vocabulary`: unused
    tokens pad the BPE to 50,257 so that every special token has its real id (large-v3's layout, 100 languages),
    as runtimes that number them from the vocabulary size (whisper.cpp) need."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    texts = texts or _DEFAULT_TEXTS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    state = json.loads(bpe.to_str())["model"]
    vocab, merges = state["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab = {token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}
    if full_vocabulary:  # the special tokens at their real ids (whisper.cpp numbers them from the vocabulary size)
        filler = (f"Ġ<{i}>" for i in range(1_000_000))
        while len(vocab) < 50257:
            vocab.setdefault(next(filler), len(vocab))

    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    if multilingual:
        specials += [f"<|{code}|>" for code in LANGUAGES]
    specials += [
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    specials += [f"<|{i * 0.02:.2f}|>" for i in range(_N_TIMESTAMPS)]
    for token in specials:  # appended in order: ids are contiguous like the real vocabulary's
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")

    config = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=[],
        begin_suppress_tokens=[ids("Ġ"), eot],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    # an English-only one has no lang_to_id/task_to_id, as openai/whisper-tiny.en: with an empty lang_to_id,
    # generate() would "detect" a language and put token 0 in the prompt
    languages = (
        dict(
            task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
            lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        )
        if multilingual
        else {}
    )
    generation = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        max_length=448,
        suppress_tokens=[],
        begin_suppress_tokens=[ids("Ġ"), eot],
        no_timestamps_token_id=ids("<|notimestamps|>"),
        is_multilingual=multilingual,
        **languages,
        prev_sot_token_id=ids("<|startofprev|>"),
        forced_decoder_ids=None,
    )
    model.generation_config = generation
    model.save_pretrained(output_dir)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=n_mels), tokenizer)
    processor.save_pretrained(output_dir)
    return output_dir


# Enough Breton to give the tiny BPE real subwords when no corpus text is given.
_DEFAULT_TEXTS = [
    "demat deoc'h",
    "c'hoant am eus da zebriñ",
    "ur c'hi bras a zo er gêr",
    "war-lerc'h ar glav e teu an heol",
    "me a gomz brezhoneg",
    "kenavo ar wech all",
    "trugarez vras",
    "pegeit e vo ar vaez",
    "an den yaouank",
    "bez' ez eus tri bugel e-barzh ar skol",
    "un ti bihan gant ur jardin",
    "petra eo da anv",
    "mont a ran d'ar gêr",
]


def enable_checkpointing(model) -> None:
    """Gradient (activation) checkpointing, non-reentrant: with LoRA's frozen base the convolution's output needs no
    gradient, and reentrant checkpointing would then cut the adapters' (peft#617). transformers 5 renamed the call."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


def save_model_atomic(
    model: WhisperForConditionalGeneration, processor: WhisperProcessor, output_dir: str | Path, language: str | None
) -> Path:
    """Write a complete Hugging Face model folder (fp32 safetensors, processor, generation config with the
    language and task) to a temporary sibling, then rename it into place: a crash or a full disk never leaves
    a half-written `output_dir`, and the previous one stays until the new one is complete."""
    import shutil

    import torch

    output_dir = Path(output_dir)
    temporary = output_dir.with_name(f".{output_dir.name}.tmp")
    previous = output_dir.with_name(f".{output_dir.name}.old")
    shutil.rmtree(temporary, ignore_errors=True)
    adapter = model if is_lora(model) else None  # --lora: save the merged plain Whisper, and the adapter beside it
    if adapter is not None:
        state, model = merged_state_dict(adapter), adapter.get_base_model()
    else:
        state = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in model.state_dict().items()}
    generation = model.generation_config
    if getattr(generation, "is_multilingual", True) and language is not None:
        generation.language, generation.task = language, TASK
    generation.forced_decoder_ids = None
    try:
        model.save_pretrained(temporary, state_dict=state)
        config = WhisperConfig.from_pretrained(temporary)  # save_pretrained records the training dtype (bf16/fp16)
        config.dtype = "float32"  # the weights written are fp32: load them so by default
        config.use_cache = True  # training may turn the KV cache off (gradient checkpointing); inference wants it
        config.save_pretrained(temporary)
        processor.save_pretrained(temporary)
        # transformers 5 nests the feature extractor in processor_config.json; faster-whisper, CTranslate2's
        # converter and older transformers read preprocessor_config.json (128-mel models break without it)
        processor.feature_extractor.save_pretrained(temporary)
        if adapter is not None:
            save_adapter(adapter, temporary / ADAPTER_FOLDER)
    except Exception as error:  # safetensors reports a full disk as SafetensorError, not OSError
        shutil.rmtree(temporary, ignore_errors=True)  # no debris; output_dir is untouched
        raise OSError(f"could not write {output_dir}: {error}") from error
    shutil.rmtree(previous, ignore_errors=True)
    if output_dir.exists():
        output_dir.rename(previous)
    temporary.rename(output_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return output_dir

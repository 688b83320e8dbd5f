"""Deployment: a trained Whisper folder converted to CTranslate2 for faster-whisper / WhisperX, and transcription
with faster-whisper under the trainer's decoding settings, so a user scores what they deploy.

The conversion is CTranslate2's own (`ctranslate2.converters.TransformersConverter`, what
`ct2-transformers-converter` runs), plus the files faster-whisper reads beside `model.bin`: `tokenizer.json` (else
it downloads openai/whisper-tiny's) and `preprocessor_config.json` (else it assumes 80 mel bins: a 128-mel
large-v3 then fails, faster-whisper#582). The output is written to a temporary sibling and renamed into place.

`transcribe_kwargs` are faster-whisper's `transcribe()` arguments that make it decode as `generate()` does in
validation: greedy (or the same beams), one temperature (no fallback re-decoding), no compression-ratio,
log-probability or no-speech rules that drop or redo a window, no timestamps, no previous-text prompt, no VAD,
the model's own suppressed tokens, the same new-token limit. One difference no setting removes: faster-whisper
pads a short clip's log-mel to 30 s with zeros, where transformers' extractor (and so training) pads the audio
with silence first; `bench/bench_export.py` measures what each difference costs on a real model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from wdsbr.data import LoaderOptions, make_eval_loader
from wdsbr.model import load_processor, set_prompt
from wdsbr.options import QUANTIZATIONS
from wdsbr.scoring import Prediction, load_normalizer, score_all

# what faster-whisper reads from the folder: CTranslate2's model and vocabulary, and the two files copied beside them
CT2_FILES = ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json")
# copied from the source when present: the two above, and what transformers needs to load the processor from the
# exported folder (launch/evaluate.py --engine faster-whisper tokenizes the references with it, as for transformers)
COPIED = (
    "tokenizer.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "processor_config.json",
    "generation_config.json",
)


def require_export_extra() -> None:
    """One line naming the fix when CTranslate2 or faster-whisper is missing (they are the `export` extra)."""
    import importlib.util

    missing = [name for name in ("ctranslate2", "faster_whisper") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not installed: pip install -e '.[export]' (make setup installs it)")


def check_whisper_folder(model: str | Path) -> Path:
    """The folder of a Hugging Face Whisper model (config.json with model_type whisper, weights, tokenizer)."""
    path = Path(model).expanduser()
    config = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"{path}: no such model folder (give a save_pretrained folder such as runs/NAME/best)")
    if not config.is_file():
        raise ValueError(f"{path}: not a Hugging Face model folder (no config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except ValueError as error:
        raise ValueError(f"{config}: not valid JSON ({error})") from error
    if model_type != "whisper":
        raise ValueError(f"{path}: not a Whisper model (config.json model_type is {model_type!r})")
    if not any(
        (path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    ):
        raise ValueError(f"{path}: no weights (model.safetensors or pytorch_model.bin)")
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        raise ValueError(f"{path}: no tokenizer (save the WhisperProcessor beside the model)")
    return path


def check_export(model: str | Path, output: str | Path, quantization: str, overwrite: bool) -> list[str]:
    """Every problem with an export request, each naming the thing and the fix (empty: go ahead)."""
    problems = []
    try:
        check_whisper_folder(model)
    except ValueError as error:
        problems.append(f"--model {error}")
    if quantization not in QUANTIZATIONS:
        problems.append(f"--quantization {quantization}: unknown; use one of {', '.join(QUANTIZATIONS)}")
    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        problems.append(f"--output {output}: already exists (pass --overwrite to replace it)")
    if output.resolve() == Path(model).expanduser().resolve():
        problems.append(f"--output {output}: is the model folder itself; give a new folder")
    return problems


def export_ct2(
    model: str | Path, output: str | Path, quantization: str = "float32", *, overwrite: bool = False
) -> dict:
    """Convert `model` to a CTranslate2 folder `output` that faster-whisper loads; returns what was written and
    any warning (a generation config without alignment_heads: CTranslate2 then guesses them)."""
    import transformers
    from transformers import GenerationConfig, WhisperFeatureExtractor

    problems = check_export(model, output, quantization, overwrite)
    if problems:
        raise ValueError("; ".join(problems))
    require_export_extra()
    import ctranslate2.converters

    transformers.utils.logging.disable_progress_bar()  # the converter loads the model: no weight-loading bar
    model, output = Path(model).expanduser(), Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    warnings = []
    try:
        generation = GenerationConfig.from_pretrained(model)
    except OSError:
        generation = None
    if generation is None or not getattr(generation, "alignment_heads", None):
        warnings.append(
            f"{model}: generation_config.json has no alignment_heads; CTranslate2 uses the last half of the "
            "decoder's heads, so word timestamps are guesses (train from a base model that has them)"
        )
    try:
        copied = [name for name in COPIED if (model / name).is_file()]
        converter = ctranslate2.converters.TransformersConverter(str(model), copy_files=copied)
        converter.convert(str(temporary), quantization=quantization, force=True)
        if not (temporary / "preprocessor_config.json").is_file():  # transformers 5 writes only processor_config.json
            WhisperFeatureExtractor.from_pretrained(model).to_json_file(str(temporary / "preprocessor_config.json"))
        if not (temporary / "tokenizer.json").is_file():
            from transformers import WhisperTokenizerFast

            WhisperTokenizerFast.from_pretrained(model).backend_tokenizer.save(str(temporary / "tokenizer.json"))
        (temporary / "wdsbr_export.json").write_text(
            json.dumps(
                {"source": str(model), "quantization": quantization, "ctranslate2": ctranslate2.__version__}, indent=2
            )
            + "\n"
        )
    except Exception as error:  # the converter raises plain Exceptions (unsupported layer, full disk): one line
        shutil.rmtree(temporary, ignore_errors=True)
        raise OSError(f"could not convert {model} to CTranslate2: {error}") from error
    missing = [name for name in CT2_FILES if not (temporary / name).is_file()]
    assert not missing, f"the CTranslate2 folder lacks {missing}"
    if output.exists():
        shutil.rmtree(output)
    temporary.rename(output)
    return {
        "output": str(output),
        "quantization": quantization,
        "files": sorted(p.name for p in output.iterdir()),
        "warnings": warnings,
    }


def is_ct2_folder(path: str | Path) -> bool:
    return (Path(path) / "model.bin").is_file() and (Path(path) / "config.json").is_file()


def load_ct2_tokenizer(path: str | Path, language: str | None):
    """The tokenizer of a CTranslate2 folder with its prompt set (for the references' labels): from the processor
    files tools/export.py copies, else from tokenizer.json alone (a folder from ct2-transformers-converter or the
    hub). Multilingual as CTranslate2 decides it: from 51,865 tokens up."""
    from transformers import GenerationConfig, WhisperTokenizerFast

    if (Path(path) / "tokenizer_config.json").is_file():  # without it transformers loads a generic tokenizer
        return load_processor(str(path), language).tokenizer
    if not (Path(path) / "tokenizer.json").is_file():
        raise ValueError(
            f"{path}: no tokenizer.json beside model.bin (export with tools/export.py, or convert with "
            "ct2-transformers-converter --copy_files tokenizer.json)"
        )
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"))
    set_prompt(tokenizer, str(path), language, GenerationConfig(is_multilingual=len(tokenizer) >= 51865))
    return tokenizer


def compute_type_of(path: str | Path, compute_type: str = "default") -> str:
    """The compute type faster-whisper runs: the one asked for, else the quantization the export recorded."""
    record = Path(path) / "wdsbr_export.json"
    if compute_type != "default" or not record.is_file():
        return compute_type
    return json.loads(record.read_text()).get("quantization", compute_type)


def load_faster_whisper(path: str | Path, compute_type: str = "default", device=None, threads: int = 0):
    """faster-whisper's WhisperModel on a CTranslate2 folder (tools/export.py writes one), on `device` (a
    torch.device: CPU, or this rank's GPU)."""
    require_export_extra()
    from faster_whisper import WhisperModel

    if not is_ct2_folder(path):
        raise ValueError(
            f"{path}: not a CTranslate2 model folder (no model.bin); make one with "
            f"python tools/export.py --model {path} --to ct2 --output {Path(path).name}-ct2"
        )
    kind = getattr(device, "type", "cpu")
    return WhisperModel(
        str(path),
        device=kind,
        device_index=(device.index or 0) if kind == "cuda" else 0,
        compute_type=compute_type,
        cpu_threads=threads,
    )


CT2_MAX_LENGTH = 448  # faster-whisper's limit on prompt + new tokens


def faster_whisper_max_new_tokens(language: str | None, max_new_tokens: int) -> int:
    """The `max_new_tokens` to give faster-whisper so that CTranslate2 generates `max_new_tokens`, as
    generate() does. CTranslate2 stops a Whisper decode at min(max_length / 2, max_length - prompt) tokens
    (CTranslate2#1856) and faster-whisper passes max_length = prompt + max_new_tokens, so asking for N gives about
    N / 2; asking for 2N - prompt gives N. The cap: 224 new tokens (448 / 2)."""
    prompt = (
        4 if language is not None else 2
    )  # <|sot|><|lang|><|transcribe|><|notimestamps|>, or <|sot|><|notimestamps|>
    return min(2 * max_new_tokens, CT2_MAX_LENGTH) - prompt


def suppressed_tokens(path: str | Path) -> list[int]:
    """The tokens generate() suppresses (the generation config's suppress_tokens, which CTranslate2's config.json
    keeps as suppress_ids). faster-whisper's default, [-1], means its own list of punctuation tokens instead."""
    return list(json.loads((Path(path) / "config.json").read_text()).get("suppress_ids", []))


def transcribe_kwargs(language: str | None, num_beams: int, max_new_tokens: int, suppress: list[int]) -> dict[str, Any]:
    """faster-whisper `transcribe()` arguments equal to validation's `generate()` (see the module docstring).
    Its defaults differ in seven ways that can change a WER: beam 5; temperature fallback 0.0…1.0 driven by
    compression-ratio and log-prob thresholds; a no-speech rule that blanks a window; timestamps on; the previous
    window's text as a prompt; its own suppressed tokens (-1) instead of the model's (`suppress`, from
    suppressed_tokens); and a new-token limit that means half (faster_whisper_max_new_tokens)."""
    return dict(
        language=language,
        task="transcribe",
        beam_size=num_beams,
        best_of=1,
        temperature=0.0,
        compression_ratio_threshold=None,
        log_prob_threshold=None,
        no_speech_threshold=None,
        condition_on_previous_text=False,
        without_timestamps=True,
        suppress_blank=True,
        suppress_tokens=list(suppress),
        max_new_tokens=faster_whisper_max_new_tokens(language, max_new_tokens),
        vad_filter=False,
        word_timestamps=False,
    )


def open_for_scoring(
    path: str | Path,
    language: str | None,
    num_beams: int,
    max_new_tokens: int,
    compute_type: str = "default",
    device=None,
    threads: int = 0,
) -> dict[str, Any]:
    """What scoring a CTranslate2 folder needs, for evaluate.py --engine faster-whisper and --export ct2 alike:
    the model, the references' tokenizer, the language it decodes (None for an English-only model), its mel bins
    and the transcribe() arguments."""
    tokenizer = load_ct2_tokenizer(path, language)
    whisper = load_faster_whisper(path, compute_type, device, threads)
    language = language if whisper.model.is_multilingual else None
    return {
        "model": whisper,
        "tokenizer": tokenizer,
        "language": language,
        "n_mels": whisper.feat_kwargs.get("feature_size", 80),
        "kwargs": transcribe_kwargs(language, num_beams, max_new_tokens, suppressed_tokens(path)),
    }


def transcribe_batch(model, audio: list[np.ndarray], kwargs: dict[str, Any]) -> list[str]:
    """One text per clip (16 kHz float32), its segments joined."""
    texts = []
    for clip in audio:
        segments, _ = model.transcribe(np.asarray(clip, dtype=np.float32), **kwargs)
        texts.append(" ".join(segment.text.strip() for segment in segments).strip())
    return texts


def run_faster_whisper(model, loader, kwargs: dict[str, Any]) -> tuple[list[Prediction], float]:
    """This rank's share of an evaluation loader (`keep_audio` batches) transcribed by faster-whisper:
    (predictions, seconds)."""
    start = time.perf_counter()
    results: list[Prediction] = []
    for batch in loader:
        texts = transcribe_batch(model, batch["audio"], kwargs)
        results += [Prediction(k, r, p) for k, r, p in zip(batch["keys"], batch["texts"], texts)]
    return results, time.perf_counter() - start


def score_on_shards(
    engine: dict[str, Any], run, shards, normalizer: str, batch_size: int, num_workers: int
) -> dict[str, Any]:
    """`shards` (every validation set) transcribed by an exported model's runtime and scored as validation scores:
    `engine` is open_for_scoring's (or wdsbr.ggml.open_whisper_cpp's) dict, `run(model, loader, kwargs)` its
    transcription loop. The scores, seconds and skipped samples of an export's report."""
    tokenizer = engine["tokenizer"]
    loader = make_eval_loader(
        shards,
        LoaderOptions(
            tokenizer,
            list(tokenizer.prefix_tokens),
            n_mels=engine["n_mels"],
            micro_batch_size=batch_size,
            num_workers=num_workers,
            normalize=load_normalizer(normalizer),
            keep_audio=True,
        ),
    )
    results, seconds = run(engine["model"], loader, engine["kwargs"])
    scores = score_all(results, normalizer)
    return {
        "wer": scores["wer"],
        "cer": scores["cer"],
        "samples": scores["samples"],
        "seconds": round(seconds, 3),
        "skipped_samples": loader.skip_counter.total(),
    }


def export_and_score(
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
    quantization: str = "float32",
) -> dict:
    """The end of `launch/train.py --export ct2` (rank 0): best/ converted into `output` as tools/export.py does,
    then `shards` (the validation set) transcribed by faster-whisper as `evaluate.py --engine faster-whisper`
    does, so summary.json holds the WER of what will be deployed beside the transformers one."""
    report = export_ct2(best, output, quantization, overwrite=True)
    engine = open_for_scoring(output, language, num_beams, max_new_tokens)
    return {
        "format": "ct2",
        "path": str(output),
        "quantization": quantization,
        "engine": "faster-whisper",
        **score_on_shards(engine, run_faster_whisper, shards, normalizer, batch_size, num_workers),
        "warnings": report["warnings"],
    }

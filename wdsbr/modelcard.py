"""The model card: `README.md` with Hugging Face model-index metadata, written into a model folder (`best/`) so the
folder can be uploaded as it is (`huggingface-cli upload NAME runs/br-small/best`).

The YAML front matter says what the Hub reads: `language: br`, tags, `base_model`, `datasets`, and a model-index
whose WER/CER results each name the text normaliser that made them (in the metric name and its `args`),
because a WER without its normaliser cannot be compared with another. The training command and hours are
recorded under `wdsbr:`. Metadata is built with `huggingface_hub.ModelCardData` (installed with transformers),
so `ModelCard.load(folder / "README.md").data` reads back what was written.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from wdsbr.streams import read_manifest

# (score key, metric type, what the metric is called); the normaliser comes from scores["normalizers"]
# (wdsbr.scoring.score_all) or, for the trainer's own wer/cer, from the --text-normalizer.
CARD_METRICS = (
    ("wer_normalized", "wer", "WER"),
    ("cer_normalized", "cer", "CER"),
    ("wer_raw", "wer", "WER"),
    ("wer_whisper_basic", "wer", "WER"),
    ("wer", "wer", "WER"),
    ("cer", "cer", "CER"),
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_CV_RELEASE = re.compile(r"cv-corpus-(\d+)\.(\d+)")


def write_model_card(
    folder: str | Path,
    *,
    language: str = "br",
    base_model: str,
    datasets: str | Iterable[str],
    hours: float | Mapping[str, float] | None,
    scores: Mapping[str, Any],
    normalizer: str | None,
    command: str | Iterable[str],
    eval_dataset: str | None = None,
    eval_split: str = "validation",
    model_name: str | None = None,
    license: str | None = None,
    export: Mapping[str, Any] | None = None,
    export_ggml: Mapping[str, Any] | None = None,
    sources: Iterable[Mapping[str, Any]] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write `folder/README.md` and return its path.

    `datasets`: Hub dataset ids (or plain names) trained on; the first is the one `scores` were measured on
    unless `eval_dataset` says otherwise, on `eval_split`. `hours`: training hours, or hours per split.
    `scores`: fractions (0.123 = 12.3 % WER) keyed as `wdsbr.scoring.score_all` keys them (`wer`, `cer`, the
    `SCORE_KEYS` and `normalizers`); they are written as percentages, the Hub's
    convention. `normalizer`: the `--text-normalizer` of the run. `command`: the training command. `export`:
    `wdsbr.export.export_and_score`'s report (`--export ct2`): a faster-whisper section with its WER. `export_ggml`:
    `wdsbr.ggml.export_ggml_and_score`'s (`--export ggml`): a whisper.cpp section with its WER.
    `sources`: the training sources (--train-shards NAME=SPEC@FACTOR), each {"name", "shards", "factor",
    "hours"}: listed with their hours and factor.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    command = command if isinstance(command, str) else shlex.join(command)
    normalizer = normalizer or "default"
    hub_base = base_model if is_hub_id(base_model) else hub_origin(base_model)
    model_name = model_name or folder.resolve().parent.name or "whisper-br"
    evaluated_on = eval_dataset or (datasets[0] if datasets else "unknown")
    rows = metric_rows(scores, normalizer)
    hours_by_split = dict(hours) if isinstance(hours, Mapping) else ({"train": hours} if hours is not None else {})
    hours_by_split = {split: round(float(value), 3) for split, value in hours_by_split.items()}
    # Common Voice's Hub datasets have one configuration per language
    config = language if evaluated_on.startswith("mozilla-foundation/common_voice") else None

    results = [
        EvalResult(
            task_type="automatic-speech-recognition",
            task_name="Speech Recognition",
            dataset_type=evaluated_on,
            dataset_name=evaluated_on,
            dataset_config=config,
            dataset_split=eval_split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=value,
            metric_args={"normalizer": label},
        )
        for _, metric_type, name, label, value in rows
    ]
    data = ModelCardData(
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=[
            "whisper",
            "automatic-speech-recognition",
            *(["breton"] if language == "br" else []),
            "wdsbr",
            "deepspeed",
            "webdataset",
        ],
        base_model=hub_base,
        datasets=[name for name in datasets if is_hub_id(name)] or None,
        metrics=sorted({metric_type for _, metric_type, *_ in rows}) or None,
        model_name=model_name if results else None,
        eval_results=results or None,
        wdsbr={
            "command": command,
            "text_normalizer": normalizer,
            "hours": hours_by_split,
            "datasets": datasets,
            **({"sources": [dict(source) for source in sources]} if sources else {}),
        },
    )
    body = (
        _body(
            model_name,
            base_model,
            hub_base,
            language,
            datasets,
            hours_by_split,
            rows,
            normalizer,
            command,
            evaluated_on,
            eval_split,
            folder,
        )
        + _sources(sources)
        + _parameters(parameters)
        + _deployment(export, language, scores)
        + _whisper_cpp(export_ggml, language, scores)
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    path = folder / "README.md"
    folder.mkdir(parents=True, exist_ok=True)
    card.save(str(path))
    return path


def _parameters(parameters: Mapping[str, Any] | None) -> str:
    """What trained: every weight, or LoRA adapters (merged into these weights; the adapter alone in adapter/)."""
    if not parameters or not parameters.get("total_params"):
        return ""
    trainable, total = parameters["trainable_params"], parameters["total_params"]
    text = f"\n## What trained\n\n{trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %)"
    if parameters.get("lora_rank"):
        targets = ", ".join(f"`{name}`" for name in parameters.get("lora_targets", []))
        text += (
            f": LoRA adapters of rank {parameters['lora_rank']} (α {parameters['lora_alpha']:g}) on {targets}, merged "
            "into the weights of this folder, which load as a plain Whisper; the adapter alone is in `adapter/` "
            "(peft)"
        )
    return text + ".\n"


def _sources(sources: Iterable[Mapping[str, Any]] | None) -> str:
    """The training sources, their hours (of their split, from their manifest) and upsampling factors."""
    if not sources:
        return ""
    rows = []
    for source in sources:
        hours = "" if source.get("hours") is None else f"{source['hours']:.2f}"
        rows.append(f"| {source['name']} | `{source['shards']}` | {hours} | {source['factor']:g} |")
    return "\n".join(
        [
            "",
            "## Training sources",
            "",
            "Each epoch shows every sample of a source about *factor* times (`--train-shards NAME=SPEC@FACTOR`).",
            "",
            "| source | shards | hours | factor |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )


def metric_rows(scores: Mapping[str, Any], normalizer: str) -> list[tuple[str, str, str, str, float]]:
    """(score key, metric type, metric name, normaliser label, value in %) for every finite score present."""
    labels = dict(scores.get("normalizers") or {})
    rows = []
    for key, metric_type, title in CARD_METRICS:
        value = scores.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        label = labels.get(key, normalizer)
        rows.append((key, metric_type, f"{title} (normalizer: {label})", label, round(100 * float(value), 2)))
    return rows


def hub_origin(folder: str | None) -> str | None:
    """The hub model a local folder is a copy of, as its `pretrained.json` says (tools/fetch_pretrained.py writes
    it: `openai/whisper-base` for the offline rebuild of base too, the same weights), else None."""
    try:
        info = json.loads((Path(folder or "").expanduser() / "pretrained.json").read_text())
    except (OSError, ValueError):
        return None
    source = str(info.get("source", ""))
    origin = info.get("same_weights_as") or (source.removeprefix("hub:") if source.startswith("hub:") else None)
    return origin if is_hub_id(origin) else None


def is_hub_id(name: str | None) -> bool:
    """True for a Hub repository id (`openai/whisper-small`), False for a local path (`runs/tiny-whisper`)."""
    return bool(name) and _HUB_ID.fullmatch(name) is not None and not Path(name).exists()


def describe_shards(train_shards: str) -> dict[str, Any]:
    """{"datasets": [...], "hours": {split: hours}} from the manifest.json beside the training shards' split
    folder (`shards/train` -> `shards/manifest.json`), for `write_model_card`; empty when there is none.
    A Common Voice release folder named `cv-corpus-17.0-…` becomes `mozilla-foundation/common_voice_17_0`; a local
    corpus is "kind:folder-name" (e.g. "ali:interviews"), which the metadata leaves out (not a Hub id)."""
    roots = () if "://" in str(train_shards) else (Path(train_shards).parent, Path(train_shards).parent.parent)
    manifest = next((found for found in map(read_manifest, roots) if found is not None), None)
    if not isinstance(manifest, dict):
        return {"datasets": [], "hours": {}}
    source = manifest.get("source", {})
    if source.get("kind") == "hf":
        names = [source["name"]]
    elif source.get("kind") == "common_voice" and (match := _CV_RELEASE.search(source.get("path", ""))):
        names = [f"mozilla-foundation/common_voice_{match.group(1)}_{match.group(2)}"]
    else:  # a local corpus: named, but not as a Hub dataset id
        names = [f"{source.get('kind', 'corpus')}:{Path(source.get('path', 'corpus')).name}"]
    hours = {split: summary["hours"] for split, summary in manifest.get("splits", {}).items()}
    return {"datasets": names, "hours": hours}


def training_command(argv: Iterable[str], launcher: str = "deepspeed") -> str:
    """The command a user types to train again: the launcher, the script and its options, without the
    `--local_rank` the launcher adds."""
    argv = list(argv)
    kept = [
        arg
        for index, arg in enumerate(argv)
        if not arg.startswith(("--local_rank", "--local-rank"))
        and not (index > 0 and argv[index - 1] in ("--local_rank", "--local-rank"))
    ]
    return shlex.join([launcher, *kept])


def _deployment(export: Mapping[str, Any] | None, language: str, scores: Mapping[str, Any]) -> str:
    """With --export ct2: where the CTranslate2 folder is, its WER beside the transformers one, and how to run it."""
    if not export:
        return ""
    transformers_wer = f"{100 * scores['wer']:.2f} % with transformers, " if scores.get("wer") is not None else ""
    return "\n".join(
        [
            "## faster-whisper (CTranslate2)",
            "",
            f"`{Path(export['path']).name}/` beside this folder ({export['quantization']}): validation WER "
            f"{transformers_wer}{100 * export['wer']:.2f} % with faster-whisper (greedy, as validation decodes, on "
            f"{export['samples']} samples).",
            "",
            "```python",
            "from faster_whisper import WhisperModel",
            "",
            f'model = WhisperModel("{export["path"]}")',
            f'segments, info = model.transcribe("recording.wav", language="{language}")',
            "```",
            "",
        ]
    )


def _whisper_cpp(export: Mapping[str, Any] | None, language: str, scores: Mapping[str, Any]) -> str:
    """With --export ggml: where the ggml file is, its WER beside the transformers one, and how to run it."""
    if not export:
        return ""
    transformers_wer = f"{100 * scores['wer']:.2f} % with transformers, " if scores.get("wer") is not None else ""
    name = Path(export["path"]).name
    return "\n".join(
        [
            "## whisper.cpp (ggml)",
            "",
            f"`{name}` beside this folder ({export['ftype']}): validation WER {transformers_wer}"
            f"{100 * export['wer']:.2f} % with whisper.cpp (decoding as validation does, on {export['samples']} "
            "samples).",
            "",
            "```bash",
            f"whisper-cli -m {name} -l {language} -f recording.wav",
            "```",
            "",
        ]
    )


def _body(
    model_name: str,
    base_model: str,
    hub_base: str | None,
    language: str,
    datasets: list[str],
    hours: dict[str, float],
    rows: list,
    normalizer: str,
    command: str,
    evaluated_on: str,
    eval_split: str,
    folder: Path,
) -> str:
    """The Markdown under the metadata: results table, data, normaliser, command, usage."""
    base = (
        f"`{base_model}`"
        if not hub_base
        else f"[{hub_base}](https://huggingface.co/{hub_base})"
        + ("" if hub_base == base_model else f" (its weights, from `{base_model}`)")
    )
    lines = [
        f"# {model_name}",
        "",
        f"Whisper fine-tuned for {'Breton' if language == 'br' else language} (`{language}`) speech recognition from "
        f"{base} with wdsbr (WebDataset shards, DeepSpeed ZeRO-2).",
        "",
    ]
    if rows:
        lines += [
            f"## Results on {evaluated_on} ({eval_split})",
            "",
            "WER and CER in %, corpus-level (total errors / total reference words or characters). Each is only "
            "comparable with numbers made by the same text normaliser.",
            "",
            "| metric | value | text normaliser |",
            "|---|---:|---|",
        ]
        lines += [f"| {metric_type.upper()} | {value:.2f} | {label} |" for _, metric_type, _, label, value in rows]
        lines.append("")
    lines += ["## Training data", ""]
    lines += [f"- {name}" for name in datasets] or ["- (not recorded)"]
    if hours:
        lines += ["", "| split | hours |", "|---|---:|"] + [
            f"| {split} | {value:.2f} |" for split, value in hours.items()
        ]
    lines += [
        "",
        "## Text normalisation",
        "",
        f"Labels and scores used `--text-normalizer {normalizer}`"
        + (
            ": the Breton community's normaliser (anaouder): numbers, ordinals, times and percentages spelled "
            "out, lower case, punctuation removed."
            if normalizer == "breton"
            else ": Unicode NFC, apostrophe variants to `'`, lower case, punctuation removed except apostrophes and "
            "hyphens inside a word."
            if normalizer in ("default", "clean_text")
            else "."
        ),
        "",
        "## Training command",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'asr = pipeline("automatic-speech-recognition", model="{folder}")  # or this model\'s Hub id',
        f'print(asr("recording.wav", generate_kwargs={{"language": "{language}", "task": "transcribe"}})["text"])',
        "```",
        "",
    ]
    return "\n".join(lines)


LM_HEADING = "## Language model fusion"


def add_lm_section(folder: str | Path, settings: Mapping[str, Any]) -> Path:
    """Add (or replace) the card's section on the n-gram LM tools/tune_lm.py tuned for this model: validation WER
    greedy, with beam search and with the LM fused, the weights, and the LM's order, text size and source."""
    path = Path(folder) / "README.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    start = text.find(LM_HEADING)
    if start >= 0:  # the previous tuning's section, up to the next section
        end = text.find("\n## ", start + len(LM_HEADING))
        text = text[:start].rstrip() + ("\n\n" + text[end + 1 :] if end >= 0 else "")
    info = settings.get("lm_info") or {}
    pct = lambda value: f"{100 * value:.2f} %" if value is not None else "–"  # noqa: E731
    beams = settings["num_beams"]
    lines = [
        LM_HEADING,
        "",
        f"Decoding can fuse an n-gram language model into the beam search (`launch/evaluate.py --lm "
        f"{settings['lm']} --num-beams {beams}`): score = acoustic log-probability + α · LM log10-probability + β · "
        f"words, with α = {settings['alpha']:g} and β = {settings['beta']:g}, tuned by `tools/tune_lm.py` on "
        f"{settings['validation']} ({settings['samples']} clips, `{settings['normalizer']}` normaliser):",
        "",
        "| decoding | validation WER |",
        "|---|---:|",
        f"| greedy | {pct(settings['wer_greedy'])} |",
        f"| beam {beams} | {pct(settings['wer_beam'])} |",
        f"| beam {beams} + LM | {pct(settings['wer_lm'])} |",
        "",
    ]
    if info:
        sources = ", ".join(f"`{source}`" for source in info.get("sources", []))
        lines += [
            f"The LM: order {info.get('order')}, {info.get('sentences')} sentences, {info.get('words')} words "
            f"({info.get('vocabulary')} distinct) from {sources}; "
            f"{info.get('excluded_sentences', {}).get('removed', 0)} lines equal to held-out sentences removed.",
            "",
        ]
    path.write_text(text.rstrip() + "\n\n" + "\n".join(lines), encoding="utf-8")
    return path

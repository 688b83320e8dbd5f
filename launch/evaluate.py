"""Transcribe a test set with a trained Whisper and score it against the references: WER, CER and speed.

    python launch/evaluate.py --model runs/br-small/best --data shards/test
    python launch/evaluate.py --model runs/br-small/best --data ./some_folder_of_wav_and_txt --output preds.tsv
    deepspeed --num_gpus 8 launch/evaluate.py --model runs/br-small/best --data shards/test   # same numbers, faster
    python launch/evaluate.py --model openai/whisper-small --data shards/test                 # the un-tuned baseline
    python launch/evaluate.py --model runs/br-small/best-ct2 --engine faster-whisper --data shards/test  # the export
    python launch/evaluate.py --model runs/br-small/best-ggml.bin --engine whisper.cpp --data shards/test

A progress bar goes to stderr, then one JSON line to stdout:
    {"wer": …, "cer": …, "samples": …, "audio_hours": …, "seconds": …, "rtf": …, "loss": …, "model": …, "data": …,
     "normalizer": "default", "skipped_samples": …, "rejected_inputs": …, …}
`--output preds.tsv` also writes every sample, worst first, and `preds.md` (worst samples, frequent substitutions).

It runs the trainer's validation code (the same loader, generate() prompt, normaliser and `score_all`), so on the
validation shards a model gets the WER the trainer logged for it. When --model is a run's best/ (or the run
folder), the run's language, normaliser, beams, generation length, eval batch size and precision are taken from
its config.json unless given (one line says which); otherwise the defaults are the trainer's: precision (fp16 on
GPU, bf16 on CPU), greedy decoding, 225 new tokens, batches of 16 from up to 4 DataLoader workers. In fp16/bf16 the
way samples are grouped into batches can move a rare token; for the trainer's exact number keep its world size
and --num-workers too. Under a launcher each rank transcribes an exact share.

`--engine faster-whisper` scores a CTranslate2 folder (tools/export.py writes one) with faster-whisper's own
`transcribe()` on the same clips, references and normaliser, decoding as validation does (same beams and new-token
limit, no temperature fallback, no timestamps, no previous-text prompt, no VAD: wdsbr.export.transcribe_kwargs);
`--compute-type` picks faster-whisper's (default: the export's quantization). Its row has no loss.
`--engine whisper.cpp` does the same for a ggml file (tools/export.py --to ggml) through pywhispercpp, clip by clip,
decoding as validation does (wdsbr.ggml.whisper_cpp_params); the references' tokenizer is the source model's (the
file's FILE.json names it). Its `precision` is the file's weight type (f16 or f32).

`--long-form` scores long recordings: --data is a folder of ID.wav + ID.txt of any length, or of anaouder .ali
files (each one recording, its segment texts joined), each transcribed whole by transformers' sequential long-form
generate() with timestamps (wdsbr.longform), scored by the same scorer and normaliser; --output also writes each
recording's subtitles (--subtitles srt or vtt) to a folder beside the TSV; --condition-on-previous prompts each
30 s window with the text decoded before it; --temperature-fallback adds Whisper's fallback (a window that loops or
is unlikely is decoded again, sampled at temperatures 0.2 … 1.0, seeded per recording: wdsbr.longform). Under a
launcher each rank transcribes every world_size-th recording. Its row has no loss; `samples` counts recordings.

The work is wdsbr.transcribe's, in order: check → distributed → data → model → transcribe → score and report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import click  # noqa: E402

from wdsbr.cli import command, run  # noqa: E402
from wdsbr.dist import say  # noqa: E402
from wdsbr.options import EvaluateOptions, explicit_options  # noqa: E402  (light: --help imports no torch)

# When --model is a run's best/ (or the run folder), these come from the run's config.json unless given:
# evaluate.py option -> the trainer's option(s) it takes, first one set wins.
FROM_RUN = {
    "language": ("language",),
    "text_normalizer": ("text_normalizer",),
    "num_beams": ("num_beams",),
    "generation_max_length": ("generation_max_length",),
    "batch_size": ("eval_batch_size", "batch_size"),
    "precision": ("precision",),
}
MODEL_HELP = (
    "Model folder (runs/NAME/best, any save_pretrained folder) or hub id (openai/whisper-small); with "
    "--engine faster-whisper, a CTranslate2 folder; with --engine whisper.cpp, a ggml file (tools/export.py)."
)


# ------------------------------------------------------------------------------------------------------ config
@command(EvaluateOptions.sections())
@EvaluateOptions.click_options(
    {"model": dict(default=None, required=True, show_default=False, help=MODEL_HELP), "data": dict(required=True)}
)
def main(**values):
    """Transcribe --data with --model and print WER, CER and speed as one JSON line."""
    from wdsbr.transcribe import check_options, transcribe_and_score  # torch, transformers: after the options

    opts = EvaluateOptions.from_flat(from_run(values, explicit_options(click.get_current_context())))
    transcribe_and_score(opts, check_options(opts))


def from_run(opts: dict, explicit: set[str]) -> dict:
    """--model runs/NAME/best (or runs/NAME): the trainer's language, normaliser, decoding and precision from
    runs/NAME/config.json, for the options not given, so the number is the one the trainer logged; says which."""
    model = Path(opts["model"]).expanduser()
    if (model / "best").is_dir() and (model / "config.json").is_file():
        opts = {**opts, "model": str(model / "best")}
        model = model / "best"
    saved = model.parent / "config.json"
    if not model.is_dir() or not saved.is_file():
        return opts
    try:
        trained = json.loads(saved.read_text())["options"]
    except (ValueError, KeyError, TypeError):  # not a run folder's config.json
        return opts
    taken = {}
    for name, sources in FROM_RUN.items():
        value = next((trained[source] for source in sources if trained.get(source) is not None), None)
        if name not in explicit and value is not None and value != opts[name]:
            taken[name] = value
    if taken:
        say(
            f"from {saved}: " + ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in taken.items()),
            err=True,
        )
    return {**opts, **taken}


if __name__ == "__main__":
    run(main)  # click's usage errors as one `error:` line too

"""Transcribe a test set with a trained Whisper and score it against the references: WER, CER and speed.

    python launch/evaluate.py --model runs/br-small/best --data shards/test
    python launch/evaluate.py --model runs/br-small/best --data ./some_folder_of_wav_and_txt --output preds.tsv
    deepspeed --num_gpus 8 launch/evaluate.py --model runs/br-small/best --data shards/test   # same numbers, faster
    python launch/evaluate.py --model openai/whisper-small --data shards/test                 # the un-tuned baseline
    python launch/evaluate.py --model runs/br-small/best-ct2 --engine faster-whisper --data shards/test  # the export

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

`--long-form` scores long recordings: --data is a folder of ID.wav + ID.txt of any length, or of anaouder .ali
files (each one recording, its segment texts joined), each transcribed whole by transformers' sequential long-form
generate() with timestamps (wdsbr.longform), scored by the same scorer and normaliser; --output also writes each
recording's subtitles (--subtitles srt or vtt) to a folder beside the TSV; --condition-on-previous prompts each
30 s window with the text decoded before it; --temperature-fallback adds Whisper's fallback (a window that loops or
is unlikely is decoded again, sampled at temperatures 0.2 … 1.0, seeded per recording: wdsbr.longform). Under a
launcher each rank transcribes every world_size-th recording. Its row has no loss; `samples` counts recordings.

Sections, in order: config → distributed → data → model → transcribe → score and report.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without `pip install -e .` too
import wdsbr  # noqa: E402

wdsbr.check_dependencies()  # a plain `python` without the set-up: one line naming the fix, no traceback

import json
import shutil
import tempfile
import time
from datetime import timedelta
from typing import NoReturn

import click
import torch
from click.core import ParameterSource
from tqdm import tqdm

from wdsbr import dist
from wdsbr.cli import run
from wdsbr.dist import say
from wdsbr.data import DEFAULT_WORKERS, SkipCounter, make_eval_loader
from wdsbr.engine import cpu_precision_for_fp16
from wdsbr.eval_data import eval_data_kind, expected_samples, prepare_shards
from wdsbr.export import COMPUTE_TYPES, ENGINES, compute_type_of, is_ct2_folder, open_for_scoring, run_faster_whisper
from wdsbr.evaluation import gather, generate_kwargs, run_validation, sum_across_ranks
from wdsbr.longform import TEMPERATURE_FALLBACK, fit_after_previous_text, list_recordings, my_share, run_long_form, subtitles
from wdsbr.metrics import finite_or_none
from wdsbr.model import check_model, is_multilingual, language_code, load_model, load_processor, quiet_libraries
from wdsbr.report import write_markdown, write_tsv
from wdsbr.scoring import SCORE_KEYS, load_normalizer, score_all, score_samples
from wdsbr.text import plural

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# When --model is a run's best/ (or the run folder), these come from the run's config.json unless given:
# evaluate.py option -> the trainer's option(s) it takes, first one set wins.
FROM_RUN = {"language": ("language",), "text_normalizer": ("text_normalizer",), "num_beams": ("num_beams",),
            "generation_max_length": ("generation_max_length",), "batch_size": ("eval_batch_size", "batch_size"),
            "precision": ("precision",)}

# ------------------------------------------------------------------------------------------------------ config
O = click.option


@click.command(context_settings={"max_content_width": 110})
@O("--model", required=True, help="Model folder (runs/NAME/best, any save_pretrained folder) or hub id (openai/whisper-small).")
@O("--data", required=True, help="Shards (folder of .tar, brace pattern, URL) or a folder of ID.wav + ID.txt pairs.")
@O("--output", default=None, help="Write every sample to this TSV (worst first) and a Markdown report beside it (.md).")
@O("--language", default="br", show_default=True, help="Language of the transcripts (code or name); ignored by *.en models.")
@O("--batch-size", type=int, default=16, show_default=True, help="Samples per generate() call on each rank.")
@O("--num-beams", type=int, default=1, show_default=True, help="Beam search width (1: greedy, as the trainer validates).")
@O("--generation-max-length", type=int, default=225, show_default=True, help="Max new tokens per transcript.")
@O("--text-normalizer", default="default", show_default=True, help="'default' (wdsbr.text.clean_text), 'breton' (anaouder: numbers spelled out) or module:function; applied to both sides.")
@O("--max-samples", type=int, default=None, help="Score only the first N samples of the data (a quick look).")
@O("--precision", type=click.Choice(list(DTYPES)), default="fp16", show_default=True, help="Compute dtype; fp16 falls back to bf16 on CPU, as in training.")
@O("--engine", type=click.Choice(ENGINES), default="transformers", show_default=True, help="transformers (a save_pretrained folder) or faster-whisper (a CTranslate2 folder from tools/export.py).")
@O("--compute-type", type=click.Choice(COMPUTE_TYPES), default="default", show_default=True, help="faster-whisper only: CTranslate2 compute type (default: the export's quantization).")
@O("--long-form", is_flag=True, help="--data is a folder of long recordings (ID.wav + ID.txt, or .ali): each transcribed whole, with timestamps.")
@O("--condition-on-previous", is_flag=True, help="--long-form: prompt each 30 s window with the text decoded before it (as faster-whisper's default; train.py --prev-text).")
@O("--temperature-fallback", is_flag=True, help="--long-form: decode a window again, sampled at 0.2 … 1.0, when its tokens loop (compression ratio > 1.35) or its mean log-probability < -1 (Whisper's long-form fallback).")
@O("--subtitles", type=click.Choice(["srt", "vtt"]), default="srt", show_default=True, help="--long-form with --output: the subtitle format written per recording.")
@O("--num-workers", type=int, default=DEFAULT_WORKERS, show_default=True, help="DataLoader workers per rank, as in training (and decoding processes for a folder); default: 4, at most the CPU cores.")
@O("--debug", is_flag=True, help="Show tracebacks for configuration errors.")
@O("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)  # passed by the deepspeed launcher
def main(**opts):
    """Transcribe --data with --model and print WER, CER and speed as one JSON line."""
    ctx = click.get_current_context()
    explicit = {name for name in opts if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    try:
        cfg = configure(from_run(opts, explicit))
    except (OSError, ValueError) as error:
        fail(error, opts["debug"])
    evaluate(cfg)


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
        say(f"from {saved}: " + ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in taken.items()), err=True)
    return {**opts, **taken}


def fail(error: Exception, debug: bool) -> NoReturn:
    """One `error: …` line (rank 0) and exit code 2; the traceback only with --debug."""
    if debug:
        raise error
    if dist.is_main():
        click.echo(f"error: {error}", err=True)
    sys.exit(2)


def configure(opts: dict) -> dict:
    """Check everything before any heavy work; raise one ValueError that lists every problem."""
    cfg, problems = dict(opts), []
    for name, least in (("batch_size", 1), ("num_beams", 1), ("generation_max_length", 1), ("num_workers", 0)):
        if cfg[name] < least:
            problems.append(f"--{name.replace('_', '-')} {cfg[name]}: must be at least {least}")
    if cfg["max_samples"] is not None and cfg["max_samples"] < 1:
        problems.append(f"--max-samples {cfg['max_samples']}: must be at least 1 (leave it out to score everything)")
    if cfg["output"] and Path(cfg["output"]).suffix.lower() == ".md":
        problems.append(f"--output {cfg['output']}: give the TSV path; the Markdown report is written beside it")
    language_ok = True
    try:
        language_code(cfg["language"])
    except ValueError as error:
        problems.append(f"--language: {error}")
        language_ok = False
    ct2 = cfg["engine"] == "faster-whisper"
    if ct2 and not is_ct2_folder(cfg["model"]):
        problems.append(f"--model {cfg['model']}: --engine faster-whisper needs a CTranslate2 folder (no model.bin); make one "
                        f"with python tools/export.py --model {cfg['model']} --to ct2 --output {cfg['model'].rstrip('/')}-ct2")
    if not ct2 and cfg["compute_type"] != "default":
        problems.append(f"--compute-type {cfg['compute_type']}: only for --engine faster-whisper (use --precision)")
    if cfg["condition_on_previous"] and not cfg["long_form"]:
        problems.append("--condition-on-previous: only with --long-form (a short clip has no text before it)")
    if cfg["temperature_fallback"] and not cfg["long_form"]:
        problems.append("--temperature-fallback: only with --long-form (short clips decode as validation does)")
    if cfg["long_form"] and ct2:
        problems.append("--long-form: only with --engine transformers for now (faster-whisper's own transcribe() "
                        "handles long audio: run it on best-ct2/ directly)")
    read_data = (lambda: cfg.update(data_kind="recordings", recordings=list_recordings(cfg["data"]))) if cfg["long_form"] \
        else (lambda: cfg.update(data_kind=eval_data_kind(cfg["data"])))
    for name, check in (("--text-normalizer", lambda: load_normalizer(cfg["text_normalizer"])),
                        ("--data", read_data),
                        ("--model", lambda: None if ct2 else check_model(cfg["model"], cfg["language"] if language_ok else None,
                                                                         load=not problems))):  # no network when the rest is wrong
        try:
            check()
        except (OSError, ValueError) as error:
            problems.append(f"{name} {error}" if not str(error).startswith("--") else str(error))
    if problems:
        raise ValueError("; ".join(problems))
    return cfg


def evaluate(cfg: dict) -> None:
    quiet_libraries()
    # ------------------------------------------------------------------------------------------ distributed
    device = torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.world_size() > 1:  # under deepspeed/torchrun: RANK, WORLD_SIZE, MASTER_ADDR from the launcher
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    world_size = dist.world_size()
    precision = cfg["precision"]
    if precision == "fp16" and device.type == "cpu":  # as training does: bf16, or fp32 without native bf16
        precision = cpu_precision_for_fp16()
        say(f"fp16 is not supported on CPU: evaluating in {precision} instead, as training does"
             + (" (--precision fp32 for full precision)" if precision == "bf16" else " (this CPU has no native bf16)"), err=True)
    dtype = DTYPES[precision]

    # ------------------------------------------------------------------------------------------------- data
    # A folder of pairs (or --max-samples) needs temporary shards: the first rank of each node writes them with
    # the project's writer, its neighbours read them. Deterministic, so every node writes the same ones.
    temporary = cfg["data_kind"] == "corpus" or (cfg["max_samples"] is not None and not cfg["long_form"])
    workdir = tempfile.mkdtemp(prefix="wdsbr-evaluate-") if temporary and dist.local_rank() == 0 else None
    try:
        prepared = {"shards": cfg["data"], "rejected": cfg["recordings"][1] if cfg["long_form"] else [], "skipped": {}}
        if temporary:
            prepared = from_node_leader(prepare_shards(cfg["data"], cfg["data_kind"], workdir, max_samples=cfg["max_samples"],
                                                       workers=cfg["num_workers"]) if workdir else {})  # collective: all ranks
        if "error" in prepared:
            fail(ValueError(prepared["error"]), cfg["debug"])

        # ---------------------------------------------------------------------------------------------- model
        if cfg["engine"] == "faster-whisper":
            engine = open_for_scoring(cfg["model"], language_code(cfg["language"]), cfg["num_beams"],
                                      cfg["generation_max_length"], cfg["compute_type"], device, torch.get_num_threads())
            model, tokenizer, language = engine["model"], engine["tokenizer"], engine["language"]
            precision = compute_type_of(cfg["model"], cfg["compute_type"])
            n_mels, max_label_tokens, start_id = engine["n_mels"], 448, tokenizer.prefix_tokens[0]
        else:
            engine, processor = None, load_processor(cfg["model"], cfg["language"])
            tokenizer = processor.tokenizer
            model = load_model(cfg["model"]).to(device, dtype)  # parameters cast as DeepSpeed's engine casts them
            language = language_code(cfg["language"]) if is_multilingual(cfg["model"], model.generation_config) else None
            n_mels, max_label_tokens = model.config.num_mel_bins, model.config.max_target_positions
            start_id = model.config.decoder_start_token_id
        prompt_ids = list(tokenizer.prefix_tokens)
        gen_kwargs = generate_kwargs(language, cfg["num_beams"], cfg["generation_max_length"])
        normalize = load_normalizer(cfg["text_normalizer"])

        # ----------------------------------------------------------------------------------------- transcribe
        if cfg["long_form"]:
            gen_kwargs["condition_on_prev_tokens"] = cfg["condition_on_previous"]  # transformers' long-form option
            if cfg["temperature_fallback"]:
                gen_kwargs.update(TEMPERATURE_FALLBACK)
            if cfg["condition_on_previous"]:
                fits = fit_after_previous_text(gen_kwargs["max_new_tokens"], max_label_tokens)
                if fits < gen_kwargs["max_new_tokens"]:
                    say(f"--condition-on-previous: at most {fits} new tokens per window, not {gen_kwargs['max_new_tokens']}: "
                         f"the previous text may take up to half of the model's {max_label_tokens} positions", err=True)
                gen_kwargs["max_new_tokens"] = fits
            results, totals, seconds = transcribe_recordings(cfg, model, processor, gen_kwargs, dtype, device, prepared)
            loss_sum, tokens = 0.0, 0
        else:
            results, loss_sum, tokens, totals, seconds = transcribe_shards(cfg, model, tokenizer, prompt_ids, n_mels,
                                                                           max_label_tokens, start_id, normalize,
                                                                           gen_kwargs, dtype, device, engine, prepared)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report(cfg, results, loss_sum, tokens, totals, seconds, prepared, normalize, language, precision, world_size)


def transcribe_shards(cfg, model, tokenizer, prompt_ids, n_mels, max_label_tokens, start_id, normalize, gen_kwargs,
                      dtype, device, engine, prepared):
    """Short clips from shards, batched as validation: (predictions, loss sum, label tokens, totals, seconds)."""
    rank, world_size = dist.rank(), dist.world_size()
    skipped = SkipCounter()
    loader = make_eval_loader(prepared["shards"], tokenizer, prompt_ids, n_mels=n_mels,
                              micro_batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], rank=rank,
                              world_size=world_size, skip_counter=skipped, normalize=normalize,
                              max_label_tokens=max_label_tokens, decoder_start_token_id=start_id,
                              keep_audio=cfg["engine"] == "faster-whisper")
    bar = tqdm(total=expected_samples(prepared["shards"], world_size), desc="evaluate", unit="sample",
               file=sys.stderr, disable=not dist.is_main(), dynamic_ncols=True)
    totals = {"audio_seconds": 0.0}
    start = time.perf_counter()
    if cfg["engine"] == "faster-whisper":  # no loss: CTranslate2 decodes, it does not score labels
        results, _ = run_faster_whisper(model, metered(loader, bar, totals), engine["kwargs"])
        loss_sum, tokens = 0.0, 0
    else:
        results, loss_sum, tokens, _ = run_validation(model, metered(loader, bar, totals), tokenizer, gen_kwargs,
                                                      dtype, device)
    results, loss_sum, tokens = gather(results, loss_sum, tokens)  # collective: all ranks
    totals = sum_across_ranks({**totals, **skipped.as_dict()})  # collective: all ranks
    seconds = time.perf_counter() - start
    bar.close()
    return results, loss_sum, tokens, totals, seconds


def transcribe_recordings(cfg, model, processor, gen_kwargs, dtype, device, prepared):
    """--long-form: this rank's share of the recordings, each whole (wdsbr.longform); with --output, each one's
    subtitles beside the TSV. Returns (every rank's predictions, totals, seconds)."""
    recordings = cfg["recordings"][0][:cfg["max_samples"]]
    mine = my_share(recordings, dist.rank(), dist.world_size())
    folder = Path(cfg["output"]).with_suffix("") if cfg["output"] else None
    bar = tqdm(total=len(recordings), desc="evaluate --long-form", unit="recording", file=sys.stderr,
               disable=not dist.is_main(), dynamic_ncols=True)

    def done(transcript):
        if folder is not None:
            path = folder / f"{transcript.key}.{cfg['subtitles']}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(subtitles(transcript.segments, cfg["subtitles"]), encoding="utf-8")
        bar.update(dist.world_size())

    start = time.perf_counter()
    results, transcripts, unreadable = run_long_form(model, processor, mine, gen_kwargs, dtype, device, on_done=done)
    results, _, _ = gather(results, 0.0, 0)  # collective: all ranks
    totals = sum_across_ranks({"audio_seconds": sum(t.audio_seconds for t in transcripts)})  # collective: all ranks
    prepared["rejected"] = prepared["rejected"] + [row for part in dist.every_rank(unreadable) for row in part]  # collective
    bar.close()
    return results, totals, time.perf_counter() - start


def report(cfg, results, loss_sum, tokens, totals, seconds, prepared, normalize, language, precision, world_size):
    """Rank 0: the JSON row (and --output's TSV + Markdown); then every rank leaves the process group."""
    if dist.is_main():
        audio_seconds = totals.pop("audio_seconds")
        skipped_by_reason = {reason: totals.get(reason, 0) + prepared["skipped"].get(reason, 0)
                             for reason in sorted({*totals, *prepared["skipped"]})}
        scores = score_all(results, cfg["text_normalizer"])  # wer/cer + raw, normalised and Whisper-basic WER, labelled
        row = {"wer": scores["wer"], "cer": scores["cer"], "samples": scores["samples"],
               **{name: scores[name] for name in SCORE_KEYS},
               "audio_hours": round(audio_seconds / 3600, 6), "seconds": round(seconds, 3),
               "rtf": round(seconds / audio_seconds, 4) if audio_seconds else None,
               "loss": loss_sum / tokens if tokens else None,
               "model": cfg["model"], "data": cfg["data"], "normalizer": cfg["text_normalizer"], "language": language,
               "engine": cfg["engine"], "precision": precision, "num_beams": cfg["num_beams"], "batch_size": cfg["batch_size"],
               "world_size": world_size, "skipped_samples": int(sum(skipped_by_reason.values())),
               "rejected_inputs": len(prepared["rejected"]), "normalizers": scores["normalizers"],
               **({"condition_on_previous": cfg["condition_on_previous"], "temperature_fallback": cfg["temperature_fallback"]}
                  if cfg["long_form"] else {})}
        row = {name: finite_or_none(value) for name, value in row.items()}
        if skipped_by_reason:
            say(f"skipped {plural(row['skipped_samples'], 'sample')}: {by_reason(skipped_by_reason)}", err=True)
        if prepared["rejected"]:
            first = prepared["rejected"][0]
            say(f"rejected {plural(len(prepared['rejected']), 'input')} of {cfg['data']}: {by_reason(prepared['rejected'])} "
                 f"(first: {first['source']}: {first['detail']})", err=True)
        if cfg["output"]:
            samples, word_errors = score_samples(results, normalize)
            tsv = Path(cfg["output"])
            tsv.parent.mkdir(parents=True, exist_ok=True)
            write_tsv(samples, tsv)
            write_markdown(samples, word_errors, row, tsv.with_suffix(".md"), rejected=prepared["rejected"])
        click.echo(json.dumps(row, ensure_ascii=False))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # before exit
        torch.distributed.destroy_process_group()
    if dist.is_main() and not row["samples"]:
        say(f"error: no sample of {cfg['data']} could be scored", err=True)
        sys.exit(1)


def by_reason(counts: dict[str, int] | list[dict]) -> str:
    """`bad_audio 2, too_long_audio 1` from counts by reason, or from rejection rows."""
    if isinstance(counts, list):
        reasons = [row["reason"] for row in counts]
        counts = {reason: reasons.count(reason) for reason in sorted(set(reasons))}
    return ", ".join(f"{reason} {int(count)}" for reason, count in sorted(counts.items()))


def from_node_leader(prepared: dict) -> dict:
    """Collective: all ranks. What this node's first rank prepared (ranks are numbered node by node)."""
    return dist.every_rank(prepared)[dist.rank() - dist.local_rank()]


def metered(loader, bar: tqdm, totals: dict):
    """The loader's batches, adding up their audio seconds and moving rank 0's progress bar."""
    for batch in loader:
        totals["audio_seconds"] += batch["audio_seconds"]
        yield batch
        bar.update(len(batch["keys"]))


if __name__ == "__main__":
    run(main)  # click's usage errors as one `error:` line too

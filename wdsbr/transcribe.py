"""What `launch/evaluate.py` does once its options are read: check them (`check_options`), then transcribe a test
set with a trained Whisper (transformers' generate(), faster-whisper on a CTranslate2 export, or whisper.cpp on a
ggml file), short clips
batched exactly as validation does or long recordings whole, score it with the trainer's scorer and print one JSON
row (`transcribe_and_score`). Under a launcher each rank transcribes an exact share."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import click
import torch
from tqdm import tqdm

from wdsbr import dist
from wdsbr.data import LoaderOptions, SkipCounter, make_eval_loader
from wdsbr.dist import say
from wdsbr.engine import cpu_precision_for_fp16
from wdsbr.eval_data import eval_data_kind, expected_samples, prepare_shards
from wdsbr.evaluation import gather, generate_kwargs, run_validation, sum_across_ranks
from wdsbr.export import compute_type_of, is_ct2_folder, open_for_scoring, run_faster_whisper
from wdsbr.ggml import is_ggml_file, open_whisper_cpp, run_whisper_cpp, tokenizer_folder
from wdsbr.lm import LMFusion, load_lm, resolve_weights
from wdsbr.longform import (
    TEMPERATURE_FALLBACK,
    fit_after_previous_text,
    list_recordings,
    my_share,
    run_long_form,
    subtitles,
)
from wdsbr.metrics import finite_or_none
from wdsbr.model import check_model, is_multilingual, language_code, load_model, load_processor, quiet_libraries
from wdsbr.options import EvaluateOptions
from wdsbr.report import write_markdown, write_tsv
from wdsbr.scoring import SCORE_KEYS, load_normalizer, score_all, score_samples
from wdsbr.text import plural

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Inputs:
    """What --data holds, found while checking the options."""

    kind: str  # "shards", "corpus" (a folder of ID.wav + ID.txt) or "recordings" (--long-form)
    recordings: list = field(default_factory=list)  # --long-form: the recordings, and the inputs left out
    rejected: list = field(default_factory=list)
    lm: object = None  # --lm: the loaded KenLM model


def check_options(opts: EvaluateOptions) -> Inputs:
    """Check everything before any heavy work and say what --data holds; raise one ValueError that lists every
    problem."""
    problems, found = [], Inputs(kind="")
    for flag, value, least in (
        ("--batch-size", opts.inputs.batch_size, 1),
        ("--num-beams", opts.decoding.num_beams, 1),
        ("--generation-max-length", opts.decoding.generation_max_length, 1),
        ("--num-workers", opts.runtime.num_workers, 0),
    ):
        if value < least:
            problems.append(f"{flag} {value}: must be at least {least}")
    if opts.inputs.max_samples is not None and opts.inputs.max_samples < 1:
        problems.append(
            f"--max-samples {opts.inputs.max_samples}: must be at least 1 (leave it out to score everything)"
        )
    if opts.inputs.output and Path(opts.inputs.output).suffix.lower() == ".md":
        problems.append(f"--output {opts.inputs.output}: give the TSV path; the Markdown report is written beside it")
    language_ok = True
    try:
        language_code(opts.whisper.language)
    except ValueError as error:
        problems.append(f"--language: {error}")
        language_ok = False
    engine_name = opts.backend.engine
    ct2, cpp = engine_name == "faster-whisper", engine_name == "whisper.cpp"
    exported = ct2 or cpp  # an export's runtime decodes: no loss, no LM, no long-form here
    if ct2 and not is_ct2_folder(opts.whisper.model):
        problems.append(
            f"--model {opts.whisper.model}: --engine faster-whisper needs a CTranslate2 folder (no model.bin); make "
            "one "
            f"with python tools/export.py --model {opts.whisper.model} --to ct2 --output "
            f"{opts.whisper.model.rstrip('/')}-ct2"
        )
    if cpp and not is_ggml_file(opts.whisper.model):
        problems.append(
            f"--model {opts.whisper.model}: --engine whisper.cpp needs a ggml file; make one with python "
            f"tools/export.py --model {opts.whisper.model} --to ggml --output ggml-model.bin"
        )
    if not ct2 and opts.backend.compute_type != "default":
        problems.append(
            f"--compute-type {opts.backend.compute_type}: only for --engine faster-whisper (use --precision)"
        )
    if opts.longform.condition_on_previous and not opts.longform.long_form:
        problems.append("--condition-on-previous: only with --long-form (a short clip has no text before it)")
    if opts.longform.temperature_fallback and not opts.longform.long_form:
        problems.append("--temperature-fallback: only with --long-form (short clips decode as validation does)")
    if opts.longform.long_form and exported:
        problems.append(
            f"--long-form: only with --engine transformers for now ({engine_name}'s own transcribe() "
            "handles long audio: run it on the export directly)"
        )

    if opts.lm.lm and exported:
        problems.append(f"--lm: only with --engine transformers ({engine_name}'s search has no hook for an LM)")
    if (opts.lm.lm_alpha is not None or opts.lm.lm_beta is not None) and not opts.lm.lm:
        problems.append("--lm-alpha/--lm-beta: only with --lm")

    def read_lm() -> None:
        if opts.lm.lm and not exported:
            resolve_weights(opts.whisper.model, opts.lm.lm_alpha, opts.lm.lm_beta)  # a broken lm.json: said now
            found.lm = load_lm(opts.lm.lm)

    def read_data() -> None:
        if opts.longform.long_form:
            found.kind = "recordings"
            found.recordings, found.rejected = list_recordings(opts.inputs.data)
        else:
            found.kind = eval_data_kind(opts.inputs.data)

    def read_model() -> None:
        if cpp and is_ggml_file(opts.whisper.model):
            tokenizer_folder(opts.whisper.model)  # the references' tokenizer: found, or said now
        elif not exported:
            check_model(opts.whisper.model, opts.whisper.language if language_ok else None, load=not problems)

    for name, check in (
        ("--text-normalizer", lambda: load_normalizer(opts.decoding.text_normalizer)),
        ("--data", read_data),
        ("--lm", read_lm),
        ("--model", read_model),
    ):  # no network when the rest is wrong
        try:
            check()
        except (OSError, ValueError) as error:
            problems.append(f"{name} {error}" if not str(error).startswith("--") else str(error))
    if problems:
        raise ValueError("; ".join(problems))
    return found


def transcribe_and_score(opts: EvaluateOptions, found: Inputs) -> None:
    quiet_libraries()
    # ------------------------------------------------------------------------------------------ distributed
    device = torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.world_size() > 1:  # under deepspeed/torchrun: RANK, WORLD_SIZE, MASTER_ADDR from the launcher
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=opts.runtime.dist_timeout_minutes)
        )
    world_size = dist.world_size()
    precision = opts.runtime.precision
    if precision == "fp16" and device.type == "cpu":  # as training does: bf16, or fp32 without native bf16
        precision = cpu_precision_for_fp16()
        say(
            f"fp16 is not supported on CPU: evaluating in {precision} instead, as training does"
            + (" (--precision fp32 for full precision)" if precision == "bf16" else " (this CPU has no native bf16)"),
            err=True,
        )
    dtype = DTYPES[precision]

    # ------------------------------------------------------------------------------------------------- data
    # A folder of pairs (or --max-samples) needs temporary shards: the first rank of each node writes them with
    # the project's writer, its neighbours read them. Deterministic, so every node writes the same ones.
    temporary = found.kind == "corpus" or (opts.inputs.max_samples is not None and not opts.longform.long_form)
    workdir = tempfile.mkdtemp(prefix="wdsbr-evaluate-") if temporary and dist.local_rank() == 0 else None
    try:
        prepared = {"shards": opts.inputs.data, "rejected": found.rejected, "skipped": {}}
        if temporary:
            prepared = from_node_leader(
                prepare_shards(
                    opts.inputs.data,
                    found.kind,
                    workdir,
                    max_samples=opts.inputs.max_samples,
                    workers=opts.runtime.num_workers,
                )
                if workdir
                else {}
            )  # collective: all ranks
        if "error" in prepared:
            raise ValueError(prepared["error"])

        # ---------------------------------------------------------------------------------------------- model
        if opts.backend.engine == "whisper.cpp":
            engine = open_whisper_cpp(
                opts.whisper.model,
                language_code(opts.whisper.language),
                opts.decoding.num_beams,
                opts.decoding.generation_max_length,
                torch.get_num_threads(),
            )
            model, tokenizer, language = engine["model"], engine["tokenizer"], engine["language"]
            precision = engine["ftype"]
            n_mels, max_label_tokens, start_id = engine["n_mels"], 448, tokenizer.prefix_tokens[0]
        elif opts.backend.engine == "faster-whisper":
            engine = open_for_scoring(
                opts.whisper.model,
                language_code(opts.whisper.language),
                opts.decoding.num_beams,
                opts.decoding.generation_max_length,
                opts.backend.compute_type,
                device,
                torch.get_num_threads(),
            )
            model, tokenizer, language = engine["model"], engine["tokenizer"], engine["language"]
            precision = compute_type_of(opts.whisper.model, opts.backend.compute_type)
            n_mels, max_label_tokens, start_id = engine["n_mels"], 448, tokenizer.prefix_tokens[0]
        else:
            engine, processor = None, load_processor(opts.whisper.model, opts.whisper.language)
            tokenizer = processor.tokenizer
            model = load_model(opts.whisper.model).to(device, dtype)  # parameters cast as DeepSpeed's engine casts them
            language = (
                language_code(opts.whisper.language)
                if is_multilingual(opts.whisper.model, model.generation_config)
                else None
            )
            n_mels, max_label_tokens = model.config.num_mel_bins, model.config.max_target_positions
            start_id = model.config.decoder_start_token_id
        prompt_ids = list(tokenizer.prefix_tokens)
        gen_kwargs = generate_kwargs(language, opts.decoding.num_beams, opts.decoding.generation_max_length)
        normalize = load_normalizer(opts.decoding.text_normalizer)
        lm_used = None
        if found.lm is not None:  # --lm: shallow fusion into the search, α and β given or tuned (lm.json)
            alpha, beta, origin = resolve_weights(opts.whisper.model, opts.lm.lm_alpha, opts.lm.lm_beta)
            fusion = LMFusion(found.lm, tokenizer, normalize, alpha, beta, opts.decoding.num_beams)
            gen_kwargs["logits_processor"] = [fusion]
            lm_used = {"path": opts.lm.lm, "alpha": alpha, "beta": beta, "weights_from": origin}

        # ----------------------------------------------------------------------------------------- transcribe
        if opts.longform.long_form:
            gen_kwargs["condition_on_prev_tokens"] = (
                opts.longform.condition_on_previous
            )  # transformers' long-form option
            if opts.longform.temperature_fallback:
                gen_kwargs.update(TEMPERATURE_FALLBACK)
            if opts.longform.condition_on_previous:
                fits = fit_after_previous_text(gen_kwargs["max_new_tokens"], max_label_tokens)
                if fits < gen_kwargs["max_new_tokens"]:
                    say(
                        f"--condition-on-previous: at most {fits} new tokens per window, not "
                        f"{gen_kwargs['max_new_tokens']}: "
                        f"the previous text may take up to half of the model's {max_label_tokens} positions",
                        err=True,
                    )
                gen_kwargs["max_new_tokens"] = fits
            results, totals, seconds = transcribe_recordings(
                opts, found, model, processor, gen_kwargs, dtype, device, prepared
            )
            loss_sum, tokens = 0.0, 0
        else:
            results, loss_sum, tokens, totals, seconds = transcribe_shards(
                opts,
                model,
                tokenizer,
                prompt_ids,
                n_mels,
                max_label_tokens,
                start_id,
                normalize,
                gen_kwargs,
                dtype,
                device,
                engine,
                prepared,
            )
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report(
        opts, results, loss_sum, tokens, totals, seconds, prepared, normalize, language, precision, world_size, lm_used
    )


def transcribe_shards(
    opts,
    model,
    tokenizer,
    prompt_ids,
    n_mels,
    max_label_tokens,
    start_id,
    normalize,
    gen_kwargs,
    dtype,
    device,
    engine,
    prepared,
):
    """Short clips from shards, batched as validation: (predictions, loss sum, label tokens, totals, seconds)."""
    rank, world_size = dist.rank(), dist.world_size()
    skipped = SkipCounter()
    loader = make_eval_loader(
        prepared["shards"],
        LoaderOptions(
            tokenizer,
            prompt_ids,
            n_mels=n_mels,
            micro_batch_size=opts.inputs.batch_size,
            num_workers=opts.runtime.num_workers,
            rank=rank,
            world_size=world_size,
            skip_counter=skipped,
            normalize=normalize,
            max_label_tokens=max_label_tokens,
            decoder_start_token_id=start_id,
            keep_audio=opts.backend.engine != "transformers",
        ),
    )
    bar = tqdm(
        total=expected_samples(prepared["shards"], world_size),
        desc="evaluate",
        unit="sample",
        file=sys.stderr,
        disable=not dist.is_main(),
        dynamic_ncols=True,
    )
    totals = {"audio_seconds": 0.0}
    start = time.perf_counter()
    if opts.backend.engine != "transformers":  # no loss: the export's runtime decodes, it does not score labels
        run = run_whisper_cpp if opts.backend.engine == "whisper.cpp" else run_faster_whisper
        results, _ = run(model, metered(loader, bar, totals), engine["kwargs"])
        loss_sum, tokens = 0.0, 0
    else:
        results, loss_sum, tokens, _ = run_validation(
            model, metered(loader, bar, totals), tokenizer, gen_kwargs, dtype, device
        )
    results, loss_sum, tokens = gather(results, loss_sum, tokens)  # collective: all ranks
    totals = sum_across_ranks({**totals, **skipped.as_dict()})  # collective: all ranks
    seconds = time.perf_counter() - start
    bar.close()
    return results, loss_sum, tokens, totals, seconds


def transcribe_recordings(opts, found, model, processor, gen_kwargs, dtype, device, prepared):
    """--long-form: this rank's share of the recordings, each whole (wdsbr.longform); with --output, each one's
    subtitles beside the TSV. Returns (every rank's predictions, totals, seconds)."""
    recordings = found.recordings[: opts.inputs.max_samples]
    mine = my_share(recordings, dist.rank(), dist.world_size())
    folder = Path(opts.inputs.output).with_suffix("") if opts.inputs.output else None
    bar = tqdm(
        total=len(recordings),
        desc="evaluate --long-form",
        unit="recording",
        file=sys.stderr,
        disable=not dist.is_main(),
        dynamic_ncols=True,
    )

    def done(transcript):
        if folder is not None:
            path = folder / f"{transcript.key}.{opts.longform.subtitles}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(subtitles(transcript.segments, opts.longform.subtitles), encoding="utf-8")
        bar.update(dist.world_size())

    start = time.perf_counter()
    results, transcripts, unreadable = run_long_form(model, processor, mine, gen_kwargs, dtype, device, on_done=done)
    results, _, _ = gather(results, 0.0, 0)  # collective: all ranks
    totals = sum_across_ranks({"audio_seconds": sum(t.audio_seconds for t in transcripts)})  # collective: all ranks
    prepared["rejected"] = prepared["rejected"] + [
        row for part in dist.every_rank(unreadable) for row in part
    ]  # collective
    bar.close()
    return results, totals, time.perf_counter() - start


def report(
    opts, results, loss_sum, tokens, totals, seconds, prepared, normalize, language, precision, world_size, lm=None
):
    """Rank 0: the JSON row (and --output's TSV + Markdown); then every rank leaves the process group."""
    if dist.is_main():
        audio_seconds = totals.pop("audio_seconds")
        skipped_by_reason = {
            reason: totals.get(reason, 0) + prepared["skipped"].get(reason, 0)
            for reason in sorted({*totals, *prepared["skipped"]})
        }
        scores = score_all(
            results, opts.decoding.text_normalizer
        )  # wer/cer + raw, normalised and Whisper-basic WER, labelled
        row = {
            "wer": scores["wer"],
            "cer": scores["cer"],
            "samples": scores["samples"],
            **{name: scores[name] for name in SCORE_KEYS},
            "audio_hours": round(audio_seconds / 3600, 6),
            "seconds": round(seconds, 3),
            "rtf": round(seconds / audio_seconds, 4) if audio_seconds else None,
            "loss": loss_sum / tokens if tokens else None,
            "model": opts.whisper.model,
            "data": opts.inputs.data,
            "normalizer": opts.decoding.text_normalizer,
            "language": language,
            "engine": opts.backend.engine,
            "precision": precision,
            "num_beams": opts.decoding.num_beams,
            "lm": lm,
            "batch_size": opts.inputs.batch_size,
            "world_size": world_size,
            "skipped_samples": int(sum(skipped_by_reason.values())),
            "rejected_inputs": len(prepared["rejected"]),
            "normalizers": scores["normalizers"],
            **(
                {
                    "condition_on_previous": opts.longform.condition_on_previous,
                    "temperature_fallback": opts.longform.temperature_fallback,
                }
                if opts.longform.long_form
                else {}
            ),
        }
        row = {name: finite_or_none(value) for name, value in row.items()}
        if skipped_by_reason:
            say(f"skipped {plural(row['skipped_samples'], 'sample')}: {by_reason(skipped_by_reason)}", err=True)
        if prepared["rejected"]:
            first = prepared["rejected"][0]
            say(
                f"rejected {plural(len(prepared['rejected']), 'input')} of {opts.inputs.data}: "
                f"{by_reason(prepared['rejected'])} "
                f"(first: {first['source']}: {first['detail']})",
                err=True,
            )
        if opts.inputs.output:
            samples, word_errors = score_samples(results, normalize)
            tsv = Path(opts.inputs.output)
            tsv.parent.mkdir(parents=True, exist_ok=True)
            write_tsv(samples, tsv)
            write_markdown(samples, word_errors, row, tsv.with_suffix(".md"), rejected=prepared["rejected"])
        click.echo(json.dumps(row, ensure_ascii=False))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # before exit
        torch.distributed.destroy_process_group()
    if dist.is_main() and not row["samples"]:
        say(f"error: no sample of {opts.inputs.data} could be scored", err=True)
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

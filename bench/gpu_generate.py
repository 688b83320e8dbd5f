"""The GPU check's generation parts (bench/gpu_check.py), beside the evaluation and export benches: the validation
step wdsbr runs during training, on the GPU.

  generate_small, generate_large, generate_small_compiled
               `wdsbr.evaluation.validation_step` (teacher-forced loss + greedy generate() + decode) on batches
               of 64 in the trainer's validation dtype, exactly 32 new tokens per utterance (min = max new
               tokens: a random model's length would be noise); dynamic cache and static cache (no compile);
               the compiled variant is transformers' auto-compile of the static-cache decoder on CUDA, whose
               first batch (the compilation) is reported apart.
"""

from __future__ import annotations

import time

from gpu_common import LANGUAGE, Check, build_model, free_memory, make_batch, rows_for, tokenizer_and_prompt

GENERATE_VARIANTS = {
    "dynamic": {},
    "static": {"cache_implementation": "static", "disable_compile": True},
    "static+compile": {"cache_implementation": "static"},  # transformers compiles the decoder step on CUDA
}


def generate(check: Check, name: str, variants: tuple[str, ...]) -> dict:
    """`validation_step` per batch, greedy, exactly `generate_tokens` new tokens an utterance; see the docstring."""
    from wdsbr.evaluation import generate_kwargs, validation_step

    sizes, spec = check.sizes, check.sizes.models[name]
    rows = rows_for(check, spec["n_mels"])
    tokenizer, _ = tokenizer_and_prompt(check, spec["n_mels"])
    dtype = validation_dtype(check)
    model = build_model(check, name).to(dtype).eval()
    start_token = model.config.decoder_start_token_id
    batches = [
        make_batch(rows, sizes.generate_batch, start_token, offset=index * sizes.generate_batch)
        for index in range(sizes.generate_batches)
    ]
    base = {
        **generate_kwargs(LANGUAGE, num_beams=1, max_new_tokens=sizes.generate_tokens),
        "min_new_tokens": sizes.generate_tokens,
    }
    result = {
        "model": name,
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": sizes.generate_batch,
        "new_tokens_per_utterance": sizes.generate_tokens,
        "variants": {},
    }
    try:
        for variant in variants:
            kwargs = {**base, **GENERATE_VARIANTS[variant]}
            try:
                started = time.perf_counter()
                validation_step(model, batches[0], tokenizer, kwargs, dtype, check.device)  # warm-up (compilation)
                first = time.perf_counter() - started
                started, utterances = time.perf_counter(), 0
                for batch in batches:
                    utterances += len(validation_step(model, batch, tokenizer, kwargs, dtype, check.device)[2])
                seconds = time.perf_counter() - started
            except Exception as error:  # noqa: BLE001 - recorded; the other variants still run
                result["variants"][variant] = {"error": f"{type(error).__name__}: {error}"}
                continue
            result["variants"][variant] = {
                "utterances_per_s": utterances / seconds,
                "new_tokens_per_s": utterances * sizes.generate_tokens / seconds,
                "first_batch_s": first,
                "timed_batches": len(batches),
            }
    finally:
        del model
        free_memory()
    failed = [variant for variant, row in result["variants"].items() if "error" in row]
    if failed:  # the part failed, with what the other variants measured
        result.update(status="error", error="; ".join(f"{v}: {result['variants'][v]['error']}" for v in failed))
    return result


def validation_dtype(check: Check):
    """The dtype validation runs in: the engine's compute dtype (fp16 on CUDA per the shipped config, bf16 on CPU)."""
    import torch

    return torch.float16 if check.cuda else torch.bfloat16

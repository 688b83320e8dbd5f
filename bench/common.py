"""Shared by the benchmarks in bench/: synthetic corpora, the HF fine-tuning recipe's pieces, statistics, peak
memory of a child process tree, and the JSON results.

Every benchmark runs its candidates interleaved (one pass of each per repetition, so drift and other load hit
all of them alike), reports the median and the min-max over repetitions, and writes bench/results/NAME.json
with the machine it ran on (including the load average: this machine may be shared, and a high load widens
the spread).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from wdsbr.dist import free_port  # noqa: E402,F401  (the benches' one copy of each)
from wdsbr.text import plural  # noqa: E402,F401

WORDS = "demat kenavo trugarez c'hoant bara mor ti gêr brezhoneg skol levr amzer glav heol".split()


# ------------------------------------------------------------------------------------------------- corpora


def write_corpus(
    folder: Path,
    n_clips: int,
    *,
    seed: int = 0,
    sample_rate: int = 16_000,
    audio_format: str = "wav",
    min_seconds: float = 2.0,
    max_seconds: float = 8.0,
    start: int = 0,
) -> list[dict]:
    """`clipNNNNN.{wav,flac}` + `.txt` pairs: band-limited noise with a syllable-rate envelope (flac compresses it
    about like speech) and 2.5 Breton words a second. Returns [{"audio": path, "text": transcript, "seconds"}].
    The same seed gives the same clips whatever the sample rate or format (the signal is drawn at 16 kHz)."""
    import soundfile as sf

    from wdsbr.audio import resample

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n_clips):
        seconds = rng.uniform(min_seconds, max_seconds)
        t = np.arange(int(seconds * 16_000)) / 16_000
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t), 0, None)
        audio = (np.convolve(rng.standard_normal(len(t)), np.ones(8) / 8, mode="same") * envelope * 0.3).astype(
            np.float32
        )
        if sample_rate != 16_000:
            audio = resample(audio, 16_000, sample_rate)
        text = " ".join(rng.choice(WORDS, size=max(1, int(seconds * 2.5)))).capitalize() + "."
        path = folder / f"clip{i:05d}.{audio_format}"
        sf.write(path, audio, sample_rate, subtype="PCM_16")
        (folder / f"clip{i:05d}.txt").write_text(text, encoding="utf-8")
        rows.append({"audio": str(path), "text": text, "seconds": len(t) / 16_000})
    return rows


def shard_folder(corpus: Path, output: Path, samples_per_shard: int = 32, audio_format: str = "flac") -> Path:
    """Shard a corpus folder with the project's own writer, everything in train; returns OUTPUT/train."""
    from wdsbr.corpus import open_corpus
    from wdsbr.shards import ShardOptions, shard_corpus

    shard_corpus(
        open_corpus(corpus),
        output,
        ShardOptions(
            val_fraction=0, test_fraction=0, samples_per_shard=samples_per_shard, audio_format=audio_format, workers=1
        ),
        progress=False,
    )
    return output / "train"


# ------------------------------------------------------------------------------- the Hugging Face recipe


class DataCollatorSpeechSeq2SeqWithPadding:
    """The padding collator of the Hugging Face Whisper fine-tuning blog ("Fine-Tune Whisper For Multilingual ASR
    with 🤗 Transformers"), verbatim apart from the class syntax."""

    def __init__(self, processor, decoder_start_token_id: int):
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict:
        input_features = [{"input_features": feature["input_features"]} for feature in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")
        label_features = [{"input_ids": feature["labels"]} for feature in features]
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def hf_raw_dataset(rows: list[dict], cache_dir: Path):
    """The corpus as a file-backed `datasets.Dataset` (audio path + sentence), as `load_dataset` gives it: `map`
    then writes its result to a cache file beside it, as it does for a hub or audiofolder dataset.

    The blog decodes with `cast_column("audio", Audio(sampling_rate=16000))`; datasets ≥ 4 decodes audio with
    torchcodec, which this project does not install (see DESIGN.md), so `hf_prepare` decodes with soundfile, the
    same library wdsbr uses."""
    import datasets

    cache_dir.mkdir(parents=True, exist_ok=True)
    listing = cache_dir / "metadata.jsonl"
    listing.write_text("".join(json.dumps({"audio": r["audio"], "sentence": r["text"]}) + "\n" for r in rows))
    return datasets.load_dataset("json", data_files=str(listing), split="train", cache_dir=str(cache_dir / "cache"))


def hf_prepare(processor):
    """The blog's `prepare_dataset`: feature extractor (its default path: torch on CPU when torch is installed)
    and tokenizer (prefix <|startoftranscript|><|br|><|transcribe|><|notimestamps|>, set on the tokenizer)."""
    import soundfile as sf

    feature_extractor, tokenizer = processor.feature_extractor, processor.tokenizer

    def prepare_dataset(batch):
        audio, sampling_rate = sf.read(batch["audio"], dtype="float32")
        batch["input_features"] = feature_extractor(audio, sampling_rate=sampling_rate).input_features[0]
        batch["labels"] = tokenizer(batch["sentence"]).input_ids
        return batch

    return prepare_dataset


def hf_map(raw, processor, num_proc: int | None = None):
    """`dataset.map(prepare_dataset, remove_columns=…)` as in the blog (num_proc=None: in this process)."""
    return raw.map(
        hf_prepare(processor), remove_columns=raw.column_names, num_proc=num_proc, desc=None, load_from_cache_file=False
    )


# ---------------------------------------------------------------------------------------------- statistics


def summarize(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def fmt(summary: dict[str, Any], digits: int = 1) -> str:
    """'123.4 (120.1-130.2)': median and min-max."""
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure_some_avg300": _cpu_pressure(),  # % of time some task waited for a CPU (other load)
    }


def _cpu_pressure() -> float | None:
    try:
        fields = Path("/proc/pressure/cpu").read_text().split("\n")[0].split()
        return float(dict(field.split("=") for field in fields[1:])["avg300"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def evaluate_json(model: str | Path, data: str | Path, *options: str, threads: int, log: Path | None = None) -> dict:
    """launch/evaluate.py --model MODEL --data DATA OPTIONS with OMP_NUM_THREADS = `threads`: its JSON row. Its
    stderr goes to `log` when given; a failure raises RuntimeError naming the command and the log (or its tail)."""
    command = [
        sys.executable,
        str(ROOT / "launch" / "evaluate.py"),
        "--model",
        str(model),
        "--data",
        str(data),
        *options,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") if log else tempfile.TemporaryFile("w+") as stderr:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        if result.returncode and log:
            raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
        if result.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n{stderr.read()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def save_results(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"bench": name, "machine": machine(), **report}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def print_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> None:
    """A markdown table; `align` is one character per column: l or r (default: first l, others r)."""
    align = align or "l" + "r" * (len(header) - 1)
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


# ------------------------------------------------------------------------------------ child process memory

_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
row = {"rc": rc, "wall_s": time.perf_counter() - start, "max_process_rss_mb": usage.ru_maxrss / 1024}
json.dump(row, open(sys.argv[1], "w"))
"""


@dataclass
class Measured:
    rc: int
    wall_s: float  # the command, from start to exit (interpreter start-up included)
    max_process_rss_mb: float  # getrusage(RUSAGE_CHILDREN).ru_maxrss: the largest single process of the tree
    peak_tree_pss_mb: float  # the whole tree's proportional set size (shared pages split), sampled every second
    cpu_series: list[tuple[float, float]]  # (time.time(), CPU seconds used so far by the tree), every 0.2 s
    output: str

    def cpu_seconds_between(self, start: float, end: float) -> float:
        """CPU seconds (user + system, all processes of the tree) spent between two time.time() instants,
        interpolated from the samples: unlike wall time, it does not grow when other work takes the cores."""
        import numpy as np

        times, cpu = zip(*self.cpu_series)
        return float(np.interp(end, times, cpu) - np.interp(start, times, cpu))


def _tree_cpu_seconds(processes) -> float:
    """user + system of each process and of its children it has already waited for (so none counted twice)."""
    import psutil

    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def run_measured(
    command: list[str], *, env: dict | None = None, cwd: Path | None = None, timeout: float = 600
) -> Measured:
    """Run `command` in a wrapper process and measure it: the wrapper's RUSAGE_CHILDREN maxrss is the peak RSS
    of the largest process in the tree (exact, kernel-kept); a sampler adds up the tree's PSS (ranks + DataLoader
    workers + launcher), which counts shared libraries once rather than once per process, and its CPU time."""
    import psutil

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        report = Path(handle.name)
    with tempfile.TemporaryFile(mode="w+") as log:
        wrapper = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, str(report), *command],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak, series, stop = [0.0], [(time.time(), 0.0)], threading.Event()

        def sample() -> None:
            root = psutil.Process(wrapper.pid)
            for tick in itertools.count(1):
                if stop.wait(0.2):
                    return
                try:
                    processes = root.children(recursive=True)
                except psutil.Error:
                    continue
                series.append((time.time(), max(series[-1][1], _tree_cpu_seconds(processes))))
                if tick % 5 == 0:  # PSS reads every mapping of every process: once a second is enough
                    total = 0
                    for process in processes:
                        try:
                            total += process.memory_full_info().pss
                        except psutil.Error:
                            pass
                    peak[0] = max(peak[0], total / 2**20)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            wrapper.wait(timeout=timeout)
        finally:
            stop.set()
            sampler.join()
            if wrapper.poll() is None:
                wrapper.kill()
        log.seek(0)
        output = log.read()
    result = (
        json.loads(report.read_text())
        if report.stat().st_size
        else {"rc": -1, "wall_s": float("nan"), "max_process_rss_mb": float("nan")}
    )
    report.unlink()
    return Measured(result["rc"], result["wall_s"], result["max_process_rss_mb"], peak[0], series, output)


class AnonymousPeak:
    """Samples this process's anonymous resident memory (RSS minus file-backed pages: heap, tensors, buffers) every
    20 ms in a thread and keeps the peak. ru_maxrss also counts the pages of memory-mapped files (the recipe's Arrow
    cache is read through mmap), which the page cache can drop at any time; the anonymous part is what a larger
    corpus really costs."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._process, self.peak_mb, self._stop = psutil.Process(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        info = self._process.memory_info()
        self.peak_mb = max(self.peak_mb, (info.rss - info.shared) / 1e6)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.peak_mb


def child_rusage() -> dict[str, float]:
    """Peak RSS in MB of this process and of its largest finished child (DataLoader workers, map's pool)."""
    import resource

    return {
        "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }

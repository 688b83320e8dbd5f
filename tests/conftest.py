"""Shared fixtures: a tiny randomly-initialised Whisper with a local tokenizer, and speech-like audio.

Nothing is downloaded: the model and tokenizer are built here, the audio is synthesised.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from wdsbr.dist import free_port  # noqa: E402,F401  (the tests import it from here)


def read_metrics(output_dir: str | Path) -> list[dict]:
    """All rows of OUTPUT/metrics.jsonl, as the trainer wrote them."""
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def speech_like(seconds: float, sample_rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with a wandering pitch through two formants, noise bursts and pauses: not speech, but
    with speech's spectral shape and dynamics (silence, loud vowels, hiss), so features are exercised."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 20 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    formants = sum(np.sin(2 * np.pi * f * t) for f in (rng.uniform(300, 800), rng.uniform(900, 2500)))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None)
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.3 * t) > 0.8)
    audio = 0.3 * voiced * (0.6 + 0.4 * formants / 2) * envelope + 0.05 * noise
    return (audio / max(1e-6, np.abs(audio).max()) * 0.8).astype(np.float32)


@contextlib.contextmanager
def serve_folder(folder: Path, missing: set[str] = frozenset()) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `folder` (paths in `missing` answer 404): yields its base URL."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path.lstrip("/") in missing:
                return self.send_error(404, "gone")
            return super().do_GET()

        def log_message(self, *args):  # quiet: pytest shows a failure's output, not every request
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def write_plain_shards(folder: Path, sizes: list[int], seconds: float = 0.5, prefix: str = "") -> list[str]:
    """Shards of the given sizes written with webdataset's own TarWriter (no manifest beside them): keys
    `{prefix}s{shard}_{sample}`, speech-like wav and a transcript."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, size in enumerate(sizes):
        path = folder / f"shard-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for index in range(size):
                audio = io.BytesIO()
                sf.write(audio, speech_like(seconds, seed=shard * 1000 + index), 16000, format="WAV")
                writer.write(
                    {
                        "__key__": f"{prefix}s{shard}_{index:03d}",
                        "wav": audio.getvalue(),
                        "txt": WORDS[(shard + index) % len(WORDS)],
                    }
                )
        paths.append(str(path))
    return paths


WORDS = ["demat", "kenavo", "trugarez", "c'hoant", "bara", "mor", "ti", "gêr", "brezhoneg", "skol"]


def write_speech_corpus(folder: Path, n: int, seed: int = 0, speakers: int = 3) -> Path:
    """n ID.wav + ID.txt pairs of speech-like audio (0.5-1.25 s) under speaker sub-folders."""
    for i in range(n):
        speaker = folder / f"spk{i % speakers}"
        speaker.mkdir(parents=True, exist_ok=True)
        sf.write(speaker / f"utt{i:03d}.wav", speech_like(0.5 + (i % 4) * 0.25, seed=seed + i), 16000)
        text = f"{WORDS[i % 10].capitalize()} {WORDS[(i * 7) % 10]}!"
        (speaker / f"utt{i:03d}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> str:
    """Folder of a tiny multilingual Whisper (80 mel bins) loadable with from_pretrained."""
    from wdsbr.model import build_tiny_whisper

    return str(build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper")))


@pytest.fixture(scope="session")
def full_whisper(tmp_path_factory) -> str:
    """A tiny Whisper with the real vocabulary layout (its special tokens at their real ids), as whisper.cpp needs."""
    from wdsbr.model import build_tiny_whisper

    return str(build_tiny_whisper(tmp_path_factory.mktemp("full-whisper"), full_vocabulary=True))


@pytest.fixture(scope="session")
def tiny_processor(tiny_whisper):
    from wdsbr.model import load_processor

    return load_processor(tiny_whisper, language="br")


def build_wordy_whisper(path: Path, multilingual: bool = True, scale: float = 30.0, n_mels: int = 80) -> str:
    """A tiny random Whisper whose greedy transcripts are text that differs from clip to clip. Timestamp tokens are
    suppressed (a random model otherwise emits only timestamps, which decode to nothing: every WER 1), and the
    encoder and cross-attention matrices are scaled by `scale` (×30): at the default init the audio barely reaches the
    decoder and every clip gets the same words (10 clips: 1 distinct transcript at ×1, 3 at ×10, 10 at ×30)."""
    import torch

    from wdsbr.model import build_tiny_whisper, load_model

    path = build_tiny_whisper(path, seed=1, multilingual=multilingual, n_mels=n_mels)
    whisper = load_model(str(path))
    first_timestamp = whisper.generation_config.no_timestamps_token_id + 1
    whisper.generation_config.suppress_tokens = list(range(first_timestamp, whisper.config.vocab_size))
    with torch.no_grad():
        for name, parameter in whisper.named_parameters():
            if parameter.dim() > 1 and (name.startswith("model.encoder.") or ".encoder_attn." in name):
                parameter.mul_(scale)
    whisper.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def wordy_whisper(tmp_path_factory) -> str:
    """A tiny multilingual Whisper that writes audio-dependent words (build_wordy_whisper)."""
    return build_wordy_whisper(tmp_path_factory.mktemp("wordy-whisper") / "tiny")


EVALUATE = Path(__file__).resolve().parents[1] / "launch" / "evaluate.py"


def run_evaluate(*args, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """launch/evaluate.py as a user runs it (python, or a launcher such as deepspeed --num_gpus 2), offline."""
    command = (launcher or [sys.executable]) + [str(EVALUATE), *map(str, args)]
    return subprocess.run(
        command,
        cwd=EVALUATE.parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def json_line(result: subprocess.CompletedProcess) -> dict:
    """The script's JSON line (the deepspeed launcher adds its own log lines to stdout)."""
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])

"""Write the bundled synthetic Breton smoke-test corpus: espeak-ng voices reading real Breton sentences.

    python tools/make_sample_corpus.py sample/corpus

Writes 42 `ID.wav` + `ID.txt` pairs under two "speakers" (sample/README.md describes the layout). This is
not Breton speech: Welsh (`cy`) and French (`fr-fr`) espeak-ng voices read a respelling of each sentence,
which is only good enough to check that sharding, training and scoring run end to end.

What the clips exercise on purpose:
- transcripts with c'h / ch, ñ, ù, ê, hyphenated words, ’ typed instead of ', digits ("3 bugel", "1998",
  "25%", "1añ") that the audio says as words, a question and an exclamation;
- nested folders (speaker-a/ID, speaker-b/day-N/ID), most clips at 16 kHz mono, a few left at espeak-ng's
  native 22.05 kHz and one stereo clip, so decoding, down-mixing and resampling all run.

Deterministic: fixed sentences, voices and parameters; sox runs with -R (repeatable) and no dither, so the
same espeak-ng and sox versions give byte-identical files. Needs only the standard library plus the
`espeak-ng` and `sox` programs (Debian/Ubuntu: `apt-get install espeak-ng sox`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

NATIVE_RATE = 22050  # espeak-ng's output rate, kept for a few clips so the sharder must resample
TARGET_RATE = 16000

# Voice, words per minute and pitch (0-99) of each synthetic speaker. "b-fr" is speaker b reading with the
# French voice: better u/eu/ch vowels and consonants, worse word endings; it gives speaker b two timbres.
VOICES = {
    "a": {"voice": "cy", "speed": 150, "pitch": 40},
    "b": {"voice": "cy+f2", "speed": 140, "pitch": 62},
    "b-fr": {"voice": "fr-fr+f2", "speed": 140, "pitch": 62},
}

# (relative id, voice, transcript exactly as written, words the audio says when they differ from the
# transcript (numbers), sample rate, channels). Ids are stable: keys derive from these paths.
CLIPS = [
    ("speaker-a/a01", "a", "Demat deoc'h, mat an traoù ganeoc'h?", None, TARGET_RATE, 1),
    ("speaker-a/a02", "a", "C'hoant am eus da zebriñ.", None, TARGET_RATE, 1),
    ("speaker-a/a03", "a", "Ur c'hi bras a zo e-barzh an ti.", None, TARGET_RATE, 1),
    ("speaker-a/a04", "a", "Me a zo o chom e Kemper.", None, TARGET_RATE, 1),
    ("speaker-a/a05", "a", "Mont a ran d'ar skol war-lerc'h merenn.", None, TARGET_RATE, 1),
    ("speaker-a/a06", "a", "Tri bugel am eus er gêr.", None, TARGET_RATE, 1),
    ("speaker-a/a07", "a", "E 1998 e oa 25% eus an dud o komz brezhoneg.",
     "E mil nav c'hant triwec'h ha pevar-ugent e oa pemp warn-ugent dre gant eus an dud o komz brezhoneg.",
     TARGET_RATE, 1),
    ("speaker-a/a08", "a", "Glav a ra hiziv, met warc'hoazh e vo brav an amzer.", None, TARGET_RATE, 1),
    ("speaker-a/a09", "a", "Ar c'hazh a gousk war ar gwele.", None, NATIVE_RATE, 1),
    ("speaker-a/a10", "a", "Pegement e koust ar bara?", None, TARGET_RATE, 1),
    ("speaker-a/a11", "a", "N’eo ket aes deskiñ ur yezh nevez.", None, TARGET_RATE, 1),
    ("speaker-a/a12", "a", "Ganet on bet e 1985.", "Ganet on bet e mil nav c'hant pemp ha pevar-ugent.",
     TARGET_RATE, 1),
    ("speaker-a/a13", "a", "Trugarez vras deoc'h evit ho skoazell!", None, TARGET_RATE, 1),
    ("speaker-a/a14", "a", "Ar besketaerien a ya d'ar mor a-raok an deiz.", None, NATIVE_RATE, 1),
    ("speaker-a/a15", "a", "Daou gi ha tri c'hazh a zo ganin.", None, TARGET_RATE, 1),
    ("speaker-a/a16", "a", "Bez’ ez eus 12 miz er bloaz.", "Bez' ez eus daouzek miz er bloaz.", TARGET_RATE, 1),
    ("speaker-a/a17", "a", "Dec'h em eus gwelet anezhañ er marc'had.", None, TARGET_RATE, 1),
    ("speaker-a/a18", "a", "Ur gêr vihan eo Landerne.", None, TARGET_RATE, 1),
    ("speaker-a/a19", "a", "Pebezh amzer fall a zo hiziv!", None, NATIVE_RATE, 1),
    ("speaker-a/a20", "a", "Ar brezhoneg a zo ur yezh keltiek.", None, TARGET_RATE, 1),
    ("speaker-a/a21", "a", "Me a garfe kaout ur gambr evit div nozvezh.", None, TARGET_RATE, 1),
    ("speaker-b/day-1/b01", "b", "3 bugel am eus er gêr.", "Tri bugel am eus er gêr.", TARGET_RATE, 1),
    ("speaker-b/day-1/b02", "b", "Petra eo da anv, ma mignon?", None, TARGET_RATE, 1),
    ("speaker-b/day-1/b03", "b-fr", "Emañ ar vugale o c'hoari er porzh.", None, TARGET_RATE, 1),
    ("speaker-b/day-1/b04", "b", "Brezhoneg a gomzan gant ma mamm-gozh.", None, TARGET_RATE, 1),
    ("speaker-b/day-1/b05", "b", "Ar 1añ a viz Du eo gouel an Hollsent.",
     "Ar c'hentañ a viz Du eo gouel an Hollsent.", TARGET_RATE, 1),
    ("speaker-b/day-1/b06", "b", "Ret eo din mont d'ar gêr bremañ.", None, TARGET_RATE, 2),
    ("speaker-b/day-1/b07", "b", "Ni a zo o vont da Vrest gant an tren.", None, TARGET_RATE, 1),
    ("speaker-b/day-1/b08", "b", "Ur banne kafe am bo, mar plij.", None, NATIVE_RATE, 1),
    ("speaker-b/day-1/b09", "b", "Ne gomprenan ket, lavarit en-dro mar plij.", None, TARGET_RATE, 1),
    ("speaker-b/day-1/b10", "b", "Peseurt liv eo ho karr-tan?", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b11", "b", "Al levrioù a zo war an daol.", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b12", "b", "Bloavezh mat ha yec'hed mat d'an holl!", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b13", "b-fr", "Ma zad a labour er porzh-mor.", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b14", "b", "Pelec'h emañ an ti-kêr, mar plij?", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b15", "b", "Kenavo, ha betek warc’hoazh!", None, NATIVE_RATE, 1),
    ("speaker-b/day-2/b16", "b", "Ar skolaerez a lenn un istor d'ar vugale.", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b17", "b-fr", "Debriñ a reomp krampouezh d'ar Sul.", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b18", "b", "Da 8 eur e krog ar skol.", "Da eizh eur e krog ar skol.", TARGET_RATE, 1),
    ("speaker-b/day-2/b19", "b", "Un ti brav o deus prenet e-kichen ar mor.", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b20", "b-fr", "Chom a ra ma breur e Pariz.", None, TARGET_RATE, 1),
    ("speaker-b/day-2/b21", "b", "Ho pet ur veaj vat!", None, TARGET_RATE, 1),
]

# Breton spelling → what the Welsh voice reads closest to Breton, applied in order (lower-cased text).
_WELSH_RESPELLING = [
    ("’", "'"),
    (r"ch(?=[aeiouy])", "si"),  # Breton ch is [ʃ]; Welsh "si" + vowel is [ʃ]
    (r"c'h", "ch"),  # Breton c'h is [x], Welsh ch
    (r"zh", "z"),  # KLT pronunciation
    (r"aou", "aw"),
    (r"où|ou", "w"),  # Breton ou is [u], Welsh w
    (r"eu", "e"),  # Welsh eu is a diphthong; plain e is nearer Breton [ø] than that
    (r"ae", "e"),
    (r"ll", "l"),  # Welsh ll is [ɬ]
    (r"f", "ff"),  # Welsh f is [v]
    (r"y", "i"),  # Breton y is [j]
    (r"ê", "e"),
    (r"ñ", "n"),
]
# Breton spelling → French voice: c'h as a French r is how many learners approximate [x]; final t/d/s/z are
# sounded in Breton but silent in French, so they get a French "-e" to be heard.
_FRENCH_RESPELLING = [
    ("’", "'"),
    (r"c'h", "r"),
    (r"zh", "z"),
    (r"ñ", "n"),
    (r"oa", "oua"),  # Breton oa is [wa], French oi/oua
    (r"\ber\b", "èr"),
    (r"(?<=e)z\b", "ze"),
    (r"(?<=[aeiou])t\b", "te"),
    (r"(?<=[aeiou])d\b", "de"),
    (r"(?<=[aeiou])s\b", "sse"),
    (r"\be\b", "et"),  # the particle e is [e] (French "et"), not a schwa; last, or "et" would get the -e
]


def respell(text: str, voice_key: str) -> str:
    """What the voice is given to read: the spoken Breton words respelt for that voice's letter-to-sound rules."""
    rules = _FRENCH_RESPELLING if VOICES[voice_key]["voice"].startswith("fr") else _WELSH_RESPELLING
    text = text.lower()
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def check_programs() -> None:
    """Fail with the Debian package to install when espeak-ng or sox is missing."""
    missing = [program for program in ("espeak-ng", "sox") if shutil.which(program) is None]
    if missing:
        packages = " ".join(missing)
        raise SystemExit(f"error: {', '.join(missing)} not found on PATH; install with: sudo apt-get install {packages}")


def synthesise(clip: tuple, out_dir: Path, scratch: Path) -> Path:
    """Speak one clip with espeak-ng, trim silence and convert with sox; write ID.wav and ID.txt."""
    clip_id, voice_key, transcript, spoken, sample_rate, channels = clip
    voice = VOICES[voice_key]
    raw = scratch / "raw.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice["voice"], "-s", str(voice["speed"]), "-p", str(voice["pitch"]), "-w", str(raw),
         respell(spoken or transcript, voice_key)],
        check=True,
    )
    wav_path = out_dir / f"{clip_id}.wav"
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    # silence … reverse silence … reverse trims both ends; pad keeps a short natural margin; the gain leaves
    # headroom so resampling does not clip espeak-ng's full-scale peaks.
    effects = ["silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse",
               "pad", "0.15", "0.15", "gain", "-3"]
    if sample_rate != NATIVE_RATE:
        effects += ["rate", "-v", str(sample_rate)]
    if channels != 1:
        effects += ["channels", str(channels)]
    # -R: repeatable, -D: no dither, so the output bytes are the same on every run.
    subprocess.run(["sox", "-R", "-D", str(raw), "-b", "16", "-e", "signed-integer", str(wav_path), *effects],
                   check=True)
    (out_dir / f"{clip_id}.txt").write_text(transcript + "\n", encoding="utf-8")
    return wav_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the corpus into (e.g. sample/corpus)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder; this script's own speaker-* folders there are "
                             "replaced, anything else is left alone")
    args = parser.parse_args()

    check_programs()
    out_dir: Path = args.out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not args.overwrite:
            raise SystemExit(f"error: {out_dir} is not empty; choose an empty folder or pass --overwrite")
        for speaker_dir in sorted({clip[0].split("/")[0] for clip in CLIPS}):
            shutil.rmtree(out_dir / speaker_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    total_seconds = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for clip in CLIPS:
            wav_path = synthesise(clip, out_dir, Path(scratch))
            with wave.open(str(wav_path)) as wav:
                seconds = wav.getnframes() / wav.getframerate()
                print(f"{wav_path.relative_to(out_dir)}  {seconds:4.1f} s  {wav.getframerate()} Hz  "
                      f"{wav.getnchannels()} ch  {clip[2]}")
            total_seconds += seconds
    size_bytes = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file())
    print(f"{len(CLIPS)} clips, {total_seconds:.1f} s of audio, {size_bytes / 1e6:.2f} MB in {out_dir}")


if __name__ == "__main__":
    sys.exit(main())

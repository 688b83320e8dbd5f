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

# One clip a line: relative id, voice (a key of VOICES), sample rate (TARGET_RATE, or NATIVE_RATE to leave
# the resampling to the sharder), channels, then the transcript exactly as written; an indented "= ..." line
# under a clip gives the words its audio says when they differ from the transcript (numbers). Ids are
# stable: keys derive from these paths.
_CLIP_TABLE = """
speaker-a/a01        a     16000  1  Demat deoc'h, mat an traoù ganeoc'h?
speaker-a/a02        a     16000  1  C'hoant am eus da zebriñ.
speaker-a/a03        a     16000  1  Ur c'hi bras a zo e-barzh an ti.
speaker-a/a04        a     16000  1  Me a zo o chom e Kemper.
speaker-a/a05        a     16000  1  Mont a ran d'ar skol war-lerc'h merenn.
speaker-a/a06        a     16000  1  Tri bugel am eus er gêr.
speaker-a/a07        a     16000  1  E 1998 e oa 25% eus an dud o komz brezhoneg.
                     = E mil nav c'hant triwec'h ha pevar-ugent e oa pemp warn-ugent dre gant eus an dud o komz brezhoneg.
speaker-a/a08        a     16000  1  Glav a ra hiziv, met warc'hoazh e vo brav an amzer.
speaker-a/a09        a     22050  1  Ar c'hazh a gousk war ar gwele.
speaker-a/a10        a     16000  1  Pegement e koust ar bara?
speaker-a/a11        a     16000  1  N’eo ket aes deskiñ ur yezh nevez.
speaker-a/a12        a     16000  1  Ganet on bet e 1985.
                     = Ganet on bet e mil nav c'hant pemp ha pevar-ugent.
speaker-a/a13        a     16000  1  Trugarez vras deoc'h evit ho skoazell!
speaker-a/a14        a     22050  1  Ar besketaerien a ya d'ar mor a-raok an deiz.
speaker-a/a15        a     16000  1  Daou gi ha tri c'hazh a zo ganin.
speaker-a/a16        a     16000  1  Bez’ ez eus 12 miz er bloaz.
                     = Bez' ez eus daouzek miz er bloaz.
speaker-a/a17        a     16000  1  Dec'h em eus gwelet anezhañ er marc'had.
speaker-a/a18        a     16000  1  Ur gêr vihan eo Landerne.
speaker-a/a19        a     22050  1  Pebezh amzer fall a zo hiziv!
speaker-a/a20        a     16000  1  Ar brezhoneg a zo ur yezh keltiek.
speaker-a/a21        a     16000  1  Me a garfe kaout ur gambr evit div nozvezh.
speaker-b/day-1/b01  b     16000  1  3 bugel am eus er gêr.
                     = Tri bugel am eus er gêr.
speaker-b/day-1/b02  b     16000  1  Petra eo da anv, ma mignon?
speaker-b/day-1/b03  b-fr  16000  1  Emañ ar vugale o c'hoari er porzh.
speaker-b/day-1/b04  b     16000  1  Brezhoneg a gomzan gant ma mamm-gozh.
speaker-b/day-1/b05  b     16000  1  Ar 1añ a viz Du eo gouel an Hollsent.
                     = Ar c'hentañ a viz Du eo gouel an Hollsent.
speaker-b/day-1/b06  b     16000  2  Ret eo din mont d'ar gêr bremañ.
speaker-b/day-1/b07  b     16000  1  Ni a zo o vont da Vrest gant an tren.
speaker-b/day-1/b08  b     22050  1  Ur banne kafe am bo, mar plij.
speaker-b/day-1/b09  b     16000  1  Ne gomprenan ket, lavarit en-dro mar plij.
speaker-b/day-1/b10  b     16000  1  Peseurt liv eo ho karr-tan?
speaker-b/day-2/b11  b     16000  1  Al levrioù a zo war an daol.
speaker-b/day-2/b12  b     16000  1  Bloavezh mat ha yec'hed mat d'an holl!
speaker-b/day-2/b13  b-fr  16000  1  Ma zad a labour er porzh-mor.
speaker-b/day-2/b14  b     16000  1  Pelec'h emañ an ti-kêr, mar plij?
speaker-b/day-2/b15  b     22050  1  Kenavo, ha betek warc’hoazh!
speaker-b/day-2/b16  b     16000  1  Ar skolaerez a lenn un istor d'ar vugale.
speaker-b/day-2/b17  b-fr  16000  1  Debriñ a reomp krampouezh d'ar Sul.
speaker-b/day-2/b18  b     16000  1  Da 8 eur e krog ar skol.
                     = Da eizh eur e krog ar skol.
speaker-b/day-2/b19  b     16000  1  Un ti brav o deus prenet e-kichen ar mor.
speaker-b/day-2/b20  b-fr  16000  1  Chom a ra ma breur e Pariz.
speaker-b/day-2/b21  b     16000  1  Ho pet ur veaj vat!
"""  # noqa: E501  (a data row: one sentence and its spoken form)


def parse_clips(table: str) -> list[tuple]:
    """(relative id, voice, transcript, spoken words or None, sample rate, channels) for each clip of the table."""
    clips: list[list] = []
    for line in table.strip("\n").splitlines():
        if line.startswith(" "):  # "= spoken words" of the clip above
            clips[-1][3] = line.strip().removeprefix("= ")
            continue
        clip_id, voice_key, sample_rate, channels, transcript = line.split(maxsplit=4)
        clips.append([clip_id, voice_key, transcript, None, int(sample_rate), int(channels)])
    return [tuple(clip) for clip in clips]


CLIPS = parse_clips(_CLIP_TABLE)

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


def respell(text: str, voice: str) -> str:
    """What an espeak-ng voice (`cy+f2`, `fr-fr`) is given to read: Breton words respelt for its letter-to-sound
    rules (French voices get the French respelling, every other voice the Welsh one)."""
    rules = _FRENCH_RESPELLING if voice.startswith("fr") else _WELSH_RESPELLING
    text = text.lower()
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def check_programs() -> None:
    """Fail with the Debian package to install when espeak-ng or sox is missing."""
    missing = [program for program in ("espeak-ng", "sox") if shutil.which(program) is None]
    if missing:
        packages = " ".join(missing)
        raise SystemExit(
            f"error: {', '.join(missing)} not found on PATH; install with: sudo apt-get install {packages}"
        )


def synthesise(clip: tuple, out_dir: Path, scratch: Path) -> Path:
    """Speak one clip with espeak-ng, trim silence and convert with sox; write ID.wav and ID.txt."""
    clip_id, voice_key, transcript, spoken, sample_rate, channels = clip
    voice = VOICES[voice_key]
    raw = scratch / "raw.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            voice["voice"],
            "-s",
            str(voice["speed"]),
            "-p",
            str(voice["pitch"]),
            "-w",
            str(raw),
            respell(spoken or transcript, voice["voice"]),
        ],
        check=True,
    )
    wav_path = out_dir / f"{clip_id}.wav"
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    # silence … reverse silence … reverse trims both ends; pad keeps a short natural margin; the gain leaves
    # headroom so resampling does not clip espeak-ng's full-scale peaks.
    effects = [
        "silence",
        "1",
        "0.02",
        "0.5%",
        "reverse",
        "silence",
        "1",
        "0.02",
        "0.5%",
        "reverse",
        "pad",
        "0.15",
        "0.15",
        "gain",
        "-3",
    ]
    if sample_rate != NATIVE_RATE:
        effects += ["rate", "-v", str(sample_rate)]
    if channels != 1:
        effects += ["channels", str(channels)]
    # -R: repeatable, -D: no dither, so the output bytes are the same on every run.
    subprocess.run(
        ["sox", "-R", "-D", str(raw), "-b", "16", "-e", "signed-integer", str(wav_path), *effects], check=True
    )
    (out_dir / f"{clip_id}.txt").write_text(transcript + "\n", encoding="utf-8")
    return wav_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the corpus into (e.g. sample/corpus)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty folder; this script's own speaker-* folders there are "
        "replaced, anything else is left alone",
    )
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
                print(
                    f"{wav_path.relative_to(out_dir)}  {seconds:4.1f} s  {wav.getframerate()} Hz  "
                    f"{wav.getnchannels()} ch  {clip[2]}"
                )
            total_seconds += seconds
    size_bytes = sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file())
    print(f"{len(CLIPS)} clips, {total_seconds:.1f} s of audio, {size_bytes / 1e6:.2f} MB in {out_dir}")


if __name__ == "__main__":
    sys.exit(main())

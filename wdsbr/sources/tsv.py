"""TSV manifests: one `path<TAB>text` per line (optional header `path<TAB>text[<TAB>speaker…]`), paths relative
to the TSV's folder or absolute."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from wdsbr.sources.base import Item, Rejection, _raw_field, _read_tsv, _relative_source, claim_key, make_key


def list_tsv(tsv: Path) -> list[Item | Rejection]:
    """Rows of a `path<TAB>text` manifest; a header `path<TAB>text[<TAB>speaker<TAB>…]` names extra columns."""
    root = tsv.parent
    header, rows = _read_tsv(tsv, header_required=False)
    entries: list[Item | Rejection] = []
    taken: dict[str, str] = {}
    for line_number, fields in rows:
        where = f"{tsv.name} line {line_number}"
        if isinstance(fields, bytes):
            entries.append(Rejection(_raw_field(fields, 0), "text_not_utf8", f"{where} is not valid UTF-8"))
            continue
        written = fields[0].strip()
        if not written:
            entries.append(Rejection(where, "missing_audio", f"{where} has no audio path"))
            continue
        audio = Path(written) if Path(written).is_absolute() else root / written
        source = _relative_source(audio, root)
        if len(fields) < 2:
            entries.append(Rejection(source, "missing_transcript", f"{where} has no tab-separated transcript"))
            continue
        if header is None:
            text, row = "\t".join(fields[1:]), {}
        else:
            row = dict(zip(header[2:], fields[2:]))
            text = fields[1]
        if not audio.is_file():
            entries.append(Rejection(source, "missing_file", f"{where}: {written} does not exist"))
            continue
        key = claim_key(make_key(str(PurePosixPath(source).with_suffix(""))), source, taken)
        if key is None:
            entries.append(Rejection(source, "duplicate_key", f"{where}: listed twice"))
            continue
        speaker = row.pop("speaker", "") or None
        meta = {name: value for name, value in row.items() if value != ""}
        entries.append(Item(key=key, source=source, audio=str(audio), text=text, speaker=speaker, meta=meta))
    return entries

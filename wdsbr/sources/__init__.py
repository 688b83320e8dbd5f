"""Where corpora come from: one module per kind of source, each listing its inputs as `Item`s and `Rejection`s.

`base` holds what every source shares (the types, keys, splits, transcripts, file and TSV reading);
`folder`, `common_voice`, `tsv`, `ali` and `hf` each own one kind. Callers go through `wdsbr.corpus`
(`open_corpus` detects the kind, `open_hf_corpus` opens a Hugging Face dataset), not through these modules.
"""

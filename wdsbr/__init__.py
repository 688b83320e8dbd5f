"""wdsbr: fine-tune Whisper on Breton from streamed WebDataset shards with DeepSpeed ZeRO-2.

Modules, one per concern: text (cleaning), audio (decode/resample/encode), features (log-mel),
corpus (finding and validating pairs), shards (writing), data (streaming loaders), collate, model.
"""

__version__ = "0.1.0"

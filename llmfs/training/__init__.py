"""Building models, offline: corpora, training, quantisation (export),
fine-tuning on an archive (``llmfs train``, the daemon's store learning) and
the strong tier's conversion.  Needs torch.

Decoding needs none of this: the runtime lives in ``llmfs.model`` (tokenizer,
model file, the exact integer engine and its native core), and nothing there
imports this package.
"""

"""Data: corpus preparation (jsonl → MDS token rows), the multi-domain loader, dynamic domain weights.

Submodules import their heavy dependencies (mosaicml-streaming, transformers) themselves, so that
importing this package stays cheap:

- ``ast_ds.data.corpus``: ``Corpus`` (where a prepared corpus lives: folder or remote + cache; manifest,
  splits, its own tokenizer copy)
- ``ast_ds.data.manifest``: the layout of a prepared corpus and its manifest
- ``ast_ds.data.tokenizer``: ``load_tokenizer`` (SentencePiece ``.model`` or a Hugging Face folder)
- ``ast_ds.data.prepare``: ``prepare(...)`` and the ``data_prep/prepare.py`` command line
- ``ast_ds.data.loader``: ``MultiDomainLoader`` and ``eval_batches``
- ``ast_ds.data.domain_weights``: ``update_domain_weights``, ``DomainWeightUpdater`` (the owner of the
  weights), ``measure_domain_losses``
- ``ast_ds.data.summary``: what ``data_prep/summarize.py`` prints
"""

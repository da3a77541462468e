"""Data: corpus preparation (jsonl → MDS token rows), the multi-domain loader, dynamic domain weights.

Submodules import their heavy dependencies (mosaicml-streaming, transformers) themselves, so that
importing this package stays cheap:

- ``ast_ds.data.tokenizer``: ``load_tokenizer`` (SentencePiece ``.model`` or a Hugging Face folder)
- ``ast_ds.data.prepare``: ``prepare(...)`` and the ``data_prep/prepare.py`` command line
- ``ast_ds.data.loader``: ``MultiDomainLoader`` and ``eval_batches``
- ``ast_ds.data.domain_weights``: ``update_domain_weights``, ``DomainWeightUpdater``, ``domain_eval_losses``
"""

"""sidrec's online service: reads only a verified bundle, never ``training/`` or torch.

Layout: ``manifest`` (the bundle contract shared with export), ``errors`` (the error hierarchy and
its HTTP mapping), ``prefix_index`` + ``constraints`` + ``beam_search`` (vectorised constrained
decoding), ``bundle`` + ``recommender`` (ONNX sessions and the batched serving core), ``explanations``
(what a tag path and a grounding say, read from the tag heads and the ID table), ``batcher``,
``store``, ``metrics``, ``settings``, ``schemas``, ``state``, ``deps``, ``routes``, ``app``.
Run it with ``python -m service --bundle DIR``.
"""

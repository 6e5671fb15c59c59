"""The generator stage: H2Rec-harmonised generative retrieval over semantic IDs (docs/CONTRACTS.md §3).

``model`` (pure nn.Module + config), ``losses``, ``cooccurrence`` (alignment positives), ``beam`` (the
reference constrained beam search), ``train`` (loop, checkpoints, DDP) and ``cli``.
"""

from training.generator.beam import BeamResult, PrefixTrie, constrained_beam_search
from training.generator.model import GeneratorConfig, SidrecGenerator

__all__ = ["BeamResult", "GeneratorConfig", "PrefixTrie", "SidrecGenerator", "constrained_beam_search"]

"""The data layer: raw formats -> one canonical dataset (items, tags, sequences, split) + text embeddings.

See docs/CONTRACTS.md §1 for what the other stages may rely on.
"""

from training.data.dataset import TAIL_FRACTION, Dataset, Item, Split
from training.data.tags import OTHER, UNKNOWN, TagVocabulary

__all__ = ["OTHER", "TAIL_FRACTION", "UNKNOWN", "Dataset", "Item", "Split", "TagVocabulary"]

"""HiD-VAE tokenizer: tag-supervised residual quantisation into unique, explainable semantic IDs.

See ``model.py`` (the network), ``quantizer.py`` (residual VQ), ``train.py`` (the loop),
``ids.py`` (disambiguation) and ``artifacts.py`` (the run folder of docs/CONTRACTS.md §2).
"""

from training.tokenizer.artifacts import load_tokenizer
from training.tokenizer.model import HiDVAE, HiDVAEConfig
from training.tokenizer.train import TokenizerConfig, TrainConfig

__all__ = ["HiDVAE", "HiDVAEConfig", "TokenizerConfig", "TrainConfig", "load_tokenizer"]

"""sidrec offline side: data preparation, HiD-VAE tokenizer, H2Rec generator, evaluation and export.

Nothing here is imported by ``service/``; the only thing that crosses over is a bundle directory.
"""

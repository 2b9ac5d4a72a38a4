"""nanoGPT as a reproducible pipeline: model, data, training, evaluation and sampling."""
__version__ = "0.1.0"

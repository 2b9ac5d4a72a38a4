"""Data preparation, in the download and prepare jobs: checksummed downloads and the mirror, text and corpus
tokenization into train.bin/val.bin/meta.json (prepare, hf_corpus), and the tokenizers a model reads (tokenizer).
The training ranks read the prepared files through prepare.BatchSampler."""

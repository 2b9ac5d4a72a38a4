"""Text generation from one of our checkpoints, a nanoGPT ckpt.pt, or a pretrained GPT-2."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from nanogpt import checkpoint as ckpt_io
from nanogpt import fileio
from nanogpt.config import is_pretrained_source
from nanogpt.data.tokenizer import CharTokenizer, Tokenizer, from_meta, gpt2_tokenizer
from nanogpt.decoding import generate
from nanogpt.errors import ConfigError, UserError
from nanogpt.model import GPT
from nanogpt.runtime import CPU_FP32, Placement
from nanogpt.settings import SampleSettings

SEPARATOR = "\n---------------\n"
log = logging.getLogger(__name__)


def read_prompt(start: str) -> str:
    """The prompt itself, or the contents of a file given as `FILE:path` (nanoGPT's convention): UTF-8 text of at
    most PROMPT_MAX_BYTES (the model reads no more than block_size tokens of it anyway)."""
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise ConfigError(f"prompt file {str(path)!r} (from start={start!r}) {fileio.not_a_file(path)}: "
                              "expected a text file")
        return fileio.read_text_capped(path, fileio.PROMPT_MAX_BYTES, "prompt file", ConfigError)
    return start


def load_model_and_tokenizer(
    source: str, meta_path: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None
) -> tuple[GPT, Tokenizer]:
    """`source` is a .pt checkpoint, a run folder, gpt2* or a local Hugging Face GPT-2 directory.

    A run folder means its model.pt (ours) or ckpt.pt (nanoGPT's out_dir). The tokenizer comes from `meta_path`
    (a meta.json, or nanoGPT's meta.pkl read without running anything), else the checkpoint's own metadata, else
    a nanoGPT meta.pkl beside the checkpoint, else GPT-2 BPE (nanoGPT's fallback).
    """
    from nanogpt import interop

    if Path(source).is_dir():
        found = interop.checkpoint_in_folder(source)
        if found is not None:
            source = str(found)
    if is_pretrained_source(source):
        from nanogpt.pretrained import load_pretrained

        chars = interop.chars_of_hf_export(source) if Path(source).is_dir() else None
        return load_pretrained(source, mirror=mirror), CharTokenizer(chars) if chars else gpt2_tokenizer(mirror)
    model, state = ckpt_io.load_model(source)
    beside = Path(source).with_name("meta.pkl")
    if meta_path is not None:
        meta = _read_meta(Path(meta_path))
    elif state.get("dataset_meta"):
        meta = state["dataset_meta"]
    elif beside.is_file():  # our `export --format nanogpt` folder, or a ckpt.pt put next to its meta.pkl
        meta = interop.read_meta_pkl(beside)
    else:
        meta = None
    if isinstance(meta, dict) and "tokenizer" in meta:
        where = f"--meta {str(meta_path)!r}" if meta_path is not None else f"the metadata of {str(source)!r}"
        tok = from_meta(meta["tokenizer"], mirror, label=where)
    else:  # a nanoGPT checkpoint without our metadata: nanoGPT's own fallback is GPT-2 BPE
        tok = gpt2_tokenizer(mirror)
    if tok.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"the {tok.kind} tokenizer has {tok.vocab_size} tokens but the checkpoint's model.vocab_size is "
            f"{model.config.vocab_size}: expected --meta with the meta.json (or nanoGPT meta.pkl) of the dataset "
            "it was trained on"
        )
    return model, tok


def _read_meta(path: Path) -> dict:
    """A dataset's meta.json, or nanoGPT's meta.pkl through a restricted unpickler (plain values only); either
    refused over its size limit (fileio.METADATA_MAX_BYTES, interop.META_PKL_MAX_BYTES) before it is read."""
    label = f"--meta {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{label} {fileio.not_a_file(path)}: expected a dataset's meta.json or nanoGPT's meta.pkl")
    data = fileio.read_capped(path, fileio.METADATA_MAX_BYTES, "--meta", ConfigError)
    if path.suffix == ".pkl" or data[:1] == b"\x80":  # pickle protocol 2+ starts with PROTO (0x80)
        from nanogpt.interop import load_plain_pickle, meta_from_nanogpt

        return meta_from_nanogpt(load_plain_pickle(data, label), label, dataset=path.parent.name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label} is neither JSON nor a pickle: expected a dataset's meta.json or "
                          "nanoGPT's meta.pkl") from None
    meta = fileio.parse_json(text, label, ConfigError)
    if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), dict):
        raise ConfigError(f"{label} has no 'tokenizer' entry: expected a dataset's meta.json")
    return meta


def generate_samples(model: GPT, tok: Tokenizer, settings: SampleSettings, placement: Placement | None = None,
                     use_cache: bool = True, write: Callable[[str], None] | None = None,
                     each_token: Callable[[], None] | None = None) -> tuple[list[str], float]:
    """Generate `num_samples` continuations of the prompt (on the CPU in fp32 unless placed); returns them and
    the tokens/s achieved. With `write`, each sample's text also goes to it as it is drawn, SEPARATOR between
    two samples: together the very text the samples join to (the draws are the same). `each_token` is called
    as each token is drawn (threads.StepWatch: an exception from it stops the generation)."""
    s = settings
    ids = encode_prompt(tok, read_prompt(s.start))
    placement = placement or CPU_FP32
    model.eval().to(placement.device)
    generator = torch.Generator(device=placement.device).manual_seed(s.seed)
    samples = []
    t0 = time.perf_counter()
    for i in range(s.num_samples):
        if write is not None and i:
            write(SEPARATOR)
        stream = TextStream(tok, write, ids, echo=True) if write is not None else None
        samples.append(tok.decode(draw_continuation(model, ids, s, placement, generator, stream, use_cache,
                                                    each_token)))
    elapsed = time.perf_counter() - t0
    return samples, s.num_samples * s.max_new_tokens / elapsed


def encode_prompt(tok: Tokenizer, prompt: str) -> list[int]:
    ids = tok.encode(prompt)
    if not ids:
        raise ConfigError("the prompt encodes to no tokens: expected a non-empty start string")
    return ids


def draw_continuation(model: GPT, ids: list[int], s: SampleSettings, placement: Placement, generator: torch.Generator,
                      stream: TextStream | None, use_cache: bool = True,
                      each_token: Callable[[], None] | None = None) -> list[int]:
    """The prompt's ids and `max_new_tokens` drawn after them (each written to `stream` as it comes)."""
    x = torch.tensor(ids, dtype=torch.long, device=placement.device)[None, :]

    def on_token(token: torch.Tensor) -> None:
        if stream is not None:
            stream.push(token.tolist())
        if each_token is not None:
            each_token()

    with generation_precision(model, placement):
        y = generate(model, x, s.max_new_tokens, s.temperature, s.top_k, use_cache=use_cache, generator=generator,
                     on_token=on_token if stream is not None or each_token is not None else None)
    if stream is not None:
        stream.finish()
    return y[0].tolist()


class TextStream:
    """The text of a growing token sequence, written as soon as it is settled.

    A byte-level BPE token may end inside a UTF-8 character: the text decoded so far then ends in U+FFFD, which is
    held back until a later token completes the character (or the end flushes it). Text after a settled point
    decodes on its own, so only the tokens since the last settled point are decoded again at each token.
    """

    def __init__(self, tok: Tokenizer, write: Callable[[str], None], prompt: list[int], echo: bool):
        self.tok, self.write = tok, write
        self.pending: list[int] = []  # tokens since the last settled point
        self.written = 0  # characters of decode(pending) already written
        if echo:
            self.push(prompt)
        else:  # the prompt counts as written: only the continuation is shown
            self.pending, self.written = list(prompt), len(tok.decode(prompt))

    def push(self, ids: list[int]) -> None:
        self.pending.extend(ids)
        text = self.tok.decode(self.pending)
        settled = len(text.rstrip("\ufffd"))
        if settled > self.written:
            self.write(text[self.written : settled])
            self.written = settled
        if settled == len(text):
            self.pending, self.written = [], 0

    def finish(self) -> None:
        """Whatever is held back, as the whole sequence decodes it (a truncated character stays U+FFFD)."""
        text = self.tok.decode(self.pending)
        if len(text) > self.written:
            self.write(text[self.written :])
        self.pending, self.written = [], 0


def interactive(model: GPT, tok: Tokenizer, settings: SampleSettings, placement: Placement,
                prompts: Iterable[str], write: Callable[[str], None], report: Callable[[str], None]) -> int:
    """For each prompt, `num_samples` continuations streamed to `write` (the prompt itself not repeated), each
    ended by a newline; returns how many prompts were answered. One generator seeded once: a session typed again
    gives the same text. A prompt that cannot be used (a character outside a char vocabulary) is reported and
    skipped; Ctrl-C stops the continuation being written and waits for the next prompt."""
    model.eval().to(placement.device)
    generator = torch.Generator(device=placement.device).manual_seed(settings.seed)
    answered = 0
    for prompt in prompts:
        if not prompt:
            continue
        try:
            ids = encode_prompt(tok, read_prompt(prompt))
        except UserError as e:
            report(str(e))
            continue
        for _ in range(settings.num_samples):
            try:
                draw_continuation(model, ids, settings, placement, generator, TextStream(tok, write, ids, echo=False))
            except KeyboardInterrupt:
                write("\n")
                break
            write("\n")
        answered += 1
    return answered


def generation_precision(model: GPT, placement: Placement) -> contextlib.AbstractContextManager:
    """The context to generate in, with the model's weights prepared for it once, in place. Each token streams
    every weight once, so generation is bound by memory:
    - bf16, on any device: the weights cast to bf16 once (half the bytes of fp32, where autocast would read the
      fp32 weights and cast them again at every token; and no op recast for fp32 layer norms). On a CPU they
      stay row-major, the layout of ATen's one-row bf16 kernel (`decoding.one_row_kernels`).
    - fp32 on a CPU: the weights column-major, as MKL's one-row sgemm streams them at 1.7x the speed of
      row-major ones (benchmarks/README.md, "A quiet machine"); the samples stay nanoGPT's.
    Otherwise (fp16, fp32 on a GPU): the placement's autocast."""
    if placement.dtype == torch.bfloat16:
        model.to(torch.bfloat16)
        if placement.device.type == "cpu":
            lay_out_weights(model, column_major=False)
        return contextlib.nullcontext()
    if placement.device.type == "cpu" and placement.dtype == torch.float32:
        lay_out_weights(model, column_major=True)
    return placement.autocast()


def lay_out_weights(model: GPT, column_major: bool) -> None:
    """Every matmul weight (the tied embedding too) stored transposed or not, its values and shape unchanged."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding) and module.weight.dim() == 2:
            w = module.weight.data
            if column_major and w.stride() != (1, w.size(0)):
                module.weight.data = w.t().contiguous().t()
            elif not column_major and not w.is_contiguous():
                module.weight.data = w.contiguous()


def write_samples(dest: str | os.PathLike, samples: list[str]) -> None:
    fileio.write_text(dest, SEPARATOR.join(samples) + "\n")


def add_samples_to_tensorboard(source: str | os.PathLike, samples: list[str], name: str) -> Path | None:
    """Show the samples in TensorBoard's Text tab beside the curves of the run they came from.

    Only when `source` is one of our run folders (or its model.pt): the text goes into that folder's events under
    `samples/<name>`, at the run's last iteration. Best-effort: the samples file is the product, so a run folder
    that cannot take the events (read-only, no tensorboard package, a failed write) gets none, with one line
    saying why, and a failed write leaves no events file behind. Returns the folder written to, else None.
    """
    import importlib.util

    from nanogpt.tracking import add_text, event_files, is_run_folder

    path = Path(source)
    run_dir = path if path.is_dir() else path.parent
    if not is_run_folder(run_dir) or (path.is_file() and path.name != "model.pt"):
        return None
    skipped = f"samples not added to the TensorBoard events of {str(run_dir)!r}"
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("%s: the tensorboard package is not installed", skipped)
        return None
    if not os.access(run_dir, os.W_OK | os.X_OK):  # checked first: TensorBoard's writer fails in its own thread
        log.warning("%s: the folder is not writable by this user", skipped)
        return None
    before = set(event_files(run_dir))
    try:
        add_text(run_dir, f"samples/{name}", "\n\n".join(_markdown_block(s) for s in samples), _run_step(run_dir))
    except OSError as e:
        for partial in set(event_files(run_dir)) - before:
            partial.unlink(missing_ok=True)
        log.warning("%s: %s", skipped, e.strerror or e)
        return None
    return run_dir


def _run_step(run_dir: Path) -> int:
    """The run's last iteration (its metrics.json), or 0 when that file is missing or not what we write."""
    try:
        metrics = fileio.load_json_capped(run_dir / "metrics.json", fileio.SMALL_JSON_MAX_BYTES, "metrics")
        return int(metrics["iters"])
    except (UserError, OSError, ValueError, KeyError, TypeError, OverflowError):
        return 0


def _markdown_block(text: str) -> str:
    """A fenced code block that keeps the sample's text as it is (a fence longer than any run of backticks in it)."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"

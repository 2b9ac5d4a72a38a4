"""OpenAI GPT-2 weights from `transformers` (hub id or local folder) -> our GPT, and our GPT -> a HF GPT-2 folder.

HF's GPT-2 stores the attention/MLP projections as `Conv1D` (weight shape in x out); ours are `nn.Linear`
(out x in), so those four weights are transposed both ways (nanoGPT's `from_pretrained`). Parameter names are
otherwise the same. Our model uses the exact GELU (like nanoGPT); OpenAI's checkpoints were trained with the tanh
approximation ("gelu_new"), which changes logits by ~1e-3: nanoGPT's published losses include that, and so do
ours. An exported model declares `activation_function: gelu`, so HF reproduces our logits exactly.

Offline use: a local folder (`pretrained:` in config.yaml maps a name to it), a `<name>/` folder with a
config.json inside the mirror (config `mirror`, `--mirror`, or $NANOGPT_MIRROR), or the HF cache (HF_HUB_OFFLINE=1). The hub is only asked when the cache
lacks the model, with short timeouts, and a failure is one line saying where to put the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nanogpt.errors import ConfigError
from nanogpt.fileio import SMALL_JSON_MAX_BYTES, file_mode, load_json_capped
from nanogpt.model import GPT, GPTConfig

# HF Conv1D weights (in x out) that are nn.Linear (out x in) here.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HUB_TIMEOUT_S = "10"  # seconds; huggingface_hub's default per request, made explicit so nothing hangs


class PretrainedError(ConfigError):
    """A pretrained model that cannot be found, fetched, or mapped onto our GPT."""


def _local_source(name_or_dir: str, mirror: str | os.PathLike | None = None) -> Path | None:
    """A local HF folder: the path itself, or `<mirror>/<name>/config.json` for air-gapped machines."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    from nanogpt.data.tokenizer import mirror_dir

    folder = mirror_dir(mirror)
    if folder is not None and "/" not in name_or_dir and (folder / name_or_dir / "config.json").is_file():
        return folder / name_or_dir
    return None


def _offline_hint(name: str) -> str:
    return (
        f"download it where there is network (`hf download {name} --local-dir DIR`) and map it in config.yaml "
        f"(`pretrained: {{{name}: DIR}}`), put it at <mirror>/{name}/ (config `mirror` or $NANOGPT_MIRROR), or pass "
        "the local directory itself"
    )


def _hf_model(name_or_dir: str, mirror: str | os.PathLike | None = None):
    """The transformers GPT2LMHeadModel (fp32): local folder, else HF cache, else the hub with short timeouts."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", HUB_TIMEOUT_S)  # read when huggingface_hub is imported
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", HUB_TIMEOUT_S)
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    local = _local_source(name_or_dir, mirror)
    if local is not None:
        cfg_path = local / "config.json"
        if not cfg_path.is_file():
            raise PretrainedError(f"{str(local)!r} has no config.json: expected a Hugging Face GPT-2 model folder")
        config = load_json_capped(cfg_path, SMALL_JSON_MAX_BYTES, "config", PretrainedError)
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if model_type != "gpt2":
            raise PretrainedError(f"{str(local)!r} holds model_type={model_type!r}: expected a 'gpt2' model")
        try:
            return GPT2LMHeadModel.from_pretrained(local, dtype=torch.float32)
        except OSError as e:
            raise PretrainedError(f"cannot load {str(local)!r} ({_first_line(e)}): expected GPT-2 weights") from None
    try:  # the cache first: no network, reproducible, fast
        return GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32, local_files_only=True)
    except OSError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise PretrainedError(f"{name_or_dir!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                              + _offline_hint(name_or_dir))
    reason = _hub_unreachable()
    if reason:
        raise PretrainedError(f"{name_or_dir!r} is not cached and the Hugging Face hub is unreachable ({reason}): "
                              + _offline_hint(name_or_dir))
    try:
        return GPT2LMHeadModel.from_pretrained(name_or_dir, dtype=torch.float32)
    except Exception as e:  # connection, timeout, unknown repo: all end the same way for the user
        raise PretrainedError(f"cannot fetch {name_or_dir!r} from the Hugging Face hub ({_first_line(e)}): "
                              + _offline_hint(name_or_dir)) from None


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """One quick request to the hub (proxy settings honoured): huggingface_hub would retry for ~30 s instead."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models/gpt2", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return None  # an answer, even an error status, means the hub is reachable
    except (urllib.error.URLError, OSError) as e:
        return _first_line(getattr(e, "reason", e) if isinstance(e, urllib.error.URLError) else e)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def config_from_hf(hf_config, dropout: float | None = None) -> GPTConfig:
    """Our GPTConfig for a HF GPT2Config; settings our architecture cannot express are refused."""
    c = hf_config
    problems = []
    if c.n_inner not in (None, 4 * c.n_embd):
        problems.append(f"n_inner={c.n_inner} (expected {4 * c.n_embd})")
    if abs(c.layer_norm_epsilon - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon={c.layer_norm_epsilon} (expected 1e-05)")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        problems.append("non-standard attention scaling")
    if getattr(c, "add_cross_attention", False):
        problems.append("cross-attention")
    if c.activation_function not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function={c.activation_function!r} (expected gelu or gelu_new)")
    if problems:
        raise PretrainedError(f"this GPT-2 variant cannot be mapped onto nanoGPT's GPT: {', '.join(problems)}")
    return GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                     n_embd=c.n_embd, dropout=c.resid_pdrop if dropout is None else dropout, bias=True)


def load_pretrained(name_or_dir: str, dropout: float | None = None, mirror: str | os.PathLike | None = None) -> GPT:
    """GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl, any hub id or local folder) as our GPT, in fp32.

    Like nanoGPT, only dropout may be overridden (None keeps the checkpoint's own, which is 0.1 for OpenAI's;
    nanoGPT's train.py passes its config dropout, 0.0 by default, and so does ours). `mirror` (else
    $NANOGPT_MIRROR) is searched for a `<name>/` folder before the Hugging Face cache and hub.
    """
    hf = _hf_model(str(name_or_dir), mirror)
    config = config_from_hf(hf.config, dropout)
    sd_hf = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    del hf
    sd = {}
    for k, v in sd_hf.items():
        sd[k] = v.t().contiguous() if k.endswith(TRANSPOSED) else v
    sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    if not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"]):
        raise PretrainedError(f"{name_or_dir!r} has untied lm_head and wte weights: expected tied embeddings")
    with torch.device("meta"):  # no random init of ~1.5B parameters that are overwritten right away
        model = GPT(config)
    expected = model.state_dict()
    for k, v in expected.items():
        if k not in sd:
            raise PretrainedError(f"{name_or_dir!r} lacks weight {k!r}: expected a complete GPT-2 state dict")
        if tuple(sd[k].shape) != tuple(v.shape):
            raise PretrainedError(f"{name_or_dir!r}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise PretrainedError(f"{name_or_dir!r} has weights nanoGPT's GPT lacks: {extra[:3]}")
    model.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)
    model.transformer.wte.weight = model.lm_head.weight  # assign=True replaced both: tie them again
    return model


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF GPT-2 names; a bias=False model gets zero biases, which computes the same thing."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied to transformer.wte.weight; HF re-ties it on load
        out[k] = (v.t() if k.endswith(TRANSPOSED) else v).detach().to("cpu", torch.float32).contiguous()
    if not model.config.bias:
        for k in list(out):
            if k.endswith(".weight") and not k.startswith(("transformer.wte", "transformer.wpe")):
                bias = k.removesuffix(".weight") + ".bias"
                width = out[k].shape[1] if k.endswith(TRANSPOSED) else out[k].shape[0]
                out[bias] = torch.zeros(width)
    return out


def export_hf(model_or_checkpoint: GPT | str | os.PathLike, out_dir: str | os.PathLike, meta: dict | None = None,
              mirror: str | os.PathLike | None = None) -> Path:
    """Write a Hugging Face GPT-2 folder that reproduces our model's logits, and its tokenizer when known.

    config.json + model.safetensors + generation_config.json (max_length = block_size: prompt and continuation
    within the context), and tokenizer.json + tokenizer_config.json for
    the tokenizer described by `meta` (a dataset's meta.json dict) or, for a checkpoint path, its `dataset_meta`;
    a checkpoint without one and a GPT-2-sized vocabulary gets GPT-2 BPE (nanoGPT's fallback too), anything else
    is exported without a tokenizer. Every check runs before anything is written; the folder is written to a temp
    folder and renamed into place, so a half-written export never sits at `out_dir`.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt import exportdir, interop

    exportdir.check_out_dir(out_dir, "config.json", "Hugging Face")
    if isinstance(model_or_checkpoint, GPT):
        model = model_or_checkpoint
    else:
        from nanogpt import checkpoint as ckpt_io

        model, ckpt = ckpt_io.load_model(model_or_checkpoint)
        meta = meta if meta is not None else ckpt.get("dataset_meta")
    c = model.config
    if c.arch != "gpt2":  # rotary + QK-norm + ReLU² + weightless norms: no transformers architecture has that block
        raise PretrainedError(f"cannot export a model.arch={c.arch!r} model to Hugging Face: no transformers "
                              "architecture computes its block (rotary with QK-norm, ReLU², norms without weights); "
                              "expected an arch gpt2 model")
    tok_meta = meta.get("tokenizer") if isinstance(meta, dict) else None
    if tok_meta is None and c.vocab_size >= 50257:
        tok_meta = {"kind": "gpt2"}
    tokenizer = interop.hf_tokenizer(tok_meta, c.vocab_size, c.block_size, mirror)
    eot = 50256 if c.vocab_size > 50256 else None
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        n_inner=None, activation_function="gelu", resid_pdrop=c.dropout, embd_pdrop=c.dropout,
        attn_pdrop=c.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=eot,
        eos_token_id=eot,
    )
    with torch.device("meta"):
        hf = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise PretrainedError(f"cannot export: HF GPT-2 expects {missing[:3]}, got extra {unexpected[:3]}")
    hf.tie_weights()
    # The model has n_positions = block_size position embeddings: generating past them is an IndexError, so the
    # generation default (pipeline("text-generation") would add 256 new tokens) stops at the context instead.
    hf.generation_config.max_length = c.block_size

    def write(tmp: Path) -> None:
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            interop.save_hf_tokenizer(tokenizer, tmp)
        for written in tmp.iterdir():  # safetensors writes 0600 through a temp file: give the umask's mode
            if written.is_file():
                written.chmod(file_mode())

    return exportdir.write_folder(out_dir, "config.json", "Hugging Face", write)

"""`nanogpt <download|prepare|train|eval|sample|bench>`: every pipeline step, also usable without Snakemake.

Each command takes its settings either from config.yaml (`--config config.yaml --name NAME`) or as the JSON
entry Snakemake passes (`--spec '{...}'`), plus nanoGPT-style `--key=value` overrides for training.
Errors a user can fix are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from nanogpt.errors import ConfigError, UserError
from nanogpt.runlock import LOCK_NAME


def _entry(args: argparse.Namespace, section: str) -> tuple[str, dict]:
    """The named entry of a config.yaml section, or the JSON given with --spec."""
    if args.spec:
        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--spec is not valid JSON ({e.msg} at char {e.pos}): expected a JSON object") from None
        if not isinstance(spec, dict):
            raise ConfigError(f"--spec is {type(spec).__name__} JSON: expected a JSON object")
        from nanogpt.config import check_name

        name = check_name(args.name or spec.get("name", section.removesuffix("s")), f"--name: {section.removesuffix('s')}")
        return name, spec
    if not args.config or not args.name:
        raise ConfigError(f"give --spec JSON, or --config FILE with --name of an entry under '{section}'")
    from nanogpt.config import check_name

    check_name(args.name, f"--name: {section.removesuffix('s')}")
    from nanogpt.config import load_yaml

    cfg = load_yaml(args.config)
    entries = cfg.get(section) or {}
    if args.name not in entries:
        import difflib

        close = difflib.get_close_matches(args.name, list(entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"no {section} entry named {args.name!r} in {args.config}{hint}")
    entry = dict(entries[args.name])
    if cfg.get("mirror") and not getattr(args, "mirror", None):
        args.mirror = cfg["mirror"]
    return args.name, entry


@contextlib.contextmanager
def _no_empty_dir(path: Path) -> Iterator[None]:
    """A failed step leaves no output behind: not even the empty folder it created for it."""
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir() and all(p.name == LOCK_NAME for p in path.iterdir()):
            (path / LOCK_NAME).unlink(missing_ok=True)
            path.rmdir()
        raise


def cmd_download(args: argparse.Namespace) -> None:
    from nanogpt.data import download

    name, spec = _entry(args, "datasets")
    with _no_empty_dir(Path(args.out).parent):
        download(spec, args.out, mirror=args.mirror, name=name)


def cmd_prepare(args: argparse.Namespace) -> None:
    # Preparing data needs no torch, but `datasets` imports it when installed (+185 MB, +1 s per process):
    # its documented switch keeps it out of this process and the tokenizer workers forked from it.
    os.environ.setdefault("USE_TORCH", "0")
    from nanogpt.data import prepare

    name, spec = _entry(args, "datasets")
    meta = prepare(spec, args.source, args.out_dir, num_proc=args.num_proc, mirror=args.mirror, name=name)
    print(f"{name}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, vocab {meta['vocab_size']}")


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from nanogpt.config import parse_overrides, resolve_run
    from nanogpt.train import train

    name, spec = _entry(args, "runs")
    run = resolve_run(spec, name, parse_overrides(overrides))
    data_dir = Path(args.data_dir or Path("results/data") / run.dataset)
    out_dir = Path(args.out_dir or Path("results/runs") / name)
    world = run.launch.nproc_per_node * run.launch.nnodes
    if world > 1 and "WORLD_SIZE" not in os.environ:
        if run.launch.nnodes > 1:
            raise ConfigError(
                f"runs.{name}.launch.nnodes={run.launch.nnodes}: a multi-node run must be started by torchrun on "
                "every node (see README, 'Multi-node'); expected nnodes=1 when started by `nanogpt train`"
            )
        cmd = [sys.executable, "-m", "nanogpt.launch", "--standalone",
               f"--nproc_per_node={run.launch.nproc_per_node}", "-m", "nanogpt.cli", *sys.argv[1:]]
        os.execv(sys.executable, cmd)
    with _no_empty_dir(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        train(run, data_dir, out_dir)


def cmd_sample(args: argparse.Namespace) -> None:
    from nanogpt.config import resolve_sample
    from nanogpt.sample import generate_samples, load_model_and_tokenizer, write_samples

    source = args.checkpoint or args.init_from
    if not source:
        raise ConfigError("give --checkpoint PATH (one of our runs or a nanoGPT ckpt.pt) or --init-from gpt2*")
    keys = ("start", "num_samples", "max_new_tokens", "temperature", "top_k", "seed", "device", "dtype")
    settings = resolve_sample({"model": str(source), **{k: getattr(args, k) for k in keys}}, "sample")
    model, tok = load_model_and_tokenizer(source, meta_path=args.meta, mirror=args.mirror)
    import torch

    from nanogpt.runtime import pick_device, pick_dtype, setup_device

    device = pick_device(settings.device)
    setup_device(device)
    dtype = pick_dtype(settings.dtype, device, model.config.n_embd)
    samples, tps = generate_samples(
        model, tok, start=settings.start, num_samples=settings.num_samples, max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature, top_k=settings.top_k, seed=settings.seed, device=str(device),
        dtype=dtype if device.type != "cpu" or dtype == torch.bfloat16 else torch.float32,
    )
    if args.out:
        write_samples(args.out, samples)
    else:
        from nanogpt.sample import SEPARATOR

        print(SEPARATOR.join(samples))
    print(f"{args.num_samples} samples, {tps:.1f} tokens/s", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> None:
    from nanogpt.evaluate import evaluate_cli

    evaluate_cli(args)


def cmd_export(args: argparse.Namespace) -> None:
    meta = None
    if args.meta:
        from nanogpt.sample import _read_meta

        meta = _read_meta(Path(args.meta))
    if args.format == "nanogpt":
        from nanogpt.interop import export_nanogpt

        out = export_nanogpt(args.checkpoint, args.out, meta=meta)
        extra = " and meta.pkl" if (out / "meta.pkl").is_file() else ""
        print(f"wrote {out / 'ckpt.pt'}{extra} (nanoGPT: python sample.py --out_dir={out})")
        return
    from nanogpt.pretrained import export_hf

    out = export_hf(args.checkpoint, args.out, meta=meta, mirror=args.mirror)
    tok = "+ tokenizer: AutoTokenizer" if (out / "tokenizer.json").is_file() else "no tokenizer: pass --meta"
    print(f"wrote {out} (Hugging Face GPT-2: AutoModelForCausalLM.from_pretrained; {tok})")


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> None:
    from nanogpt.bench import bench_cli

    bench_cli(args, overrides)


def add_eval_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--checkpoint", help="model.pt of a run, or a nanoGPT ckpt.pt")
    sp.add_argument("--init-from", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local HF directory")
    sp.add_argument("--data-dir", required=True, help="prepared dataset folder (train.bin, val.bin, meta.json)")
    sp.add_argument("--out", help="write the result JSON here (default: stdout)")
    sp.add_argument("--model-name", help="name recorded in the result (default: the checkpoint or init-from)")
    sp.add_argument("--dataset-name", help="name recorded in the result (default: the data folder's name)")
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--block-size", type=int, default=None, help="default: the model's block_size")
    sp.add_argument("--eval-iters", type=int, default=500)
    sp.add_argument("--splits", default="train,val")
    sp.add_argument("--seed", type=int, default=1337)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--dtype", default="auto")
    sp.add_argument("--mirror")


def add_bench_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--warmup", type=int, default=5)
    sp.add_argument("--data-dir", help="prepared dataset to draw batches from (default: random tokens)")
    sp.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")


def _optional_int(text: str) -> int | None:
    """An integer, or none/null for "no limit" (what `top_k: null` means in config.yaml)."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or 'none'") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanogpt", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def entry_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="config.yaml to read the entry from")
        sp.add_argument("--name", help="the entry's name in config.yaml")
        sp.add_argument("--spec", help="the entry as JSON (what the Snakemake rules pass)")
        sp.add_argument("--mirror", help="local mirror directory (default: config `mirror` or $NANOGPT_MIRROR)")

    sp = sub.add_parser("download", help="fetch a dataset's source, sha256-checked (or from the mirror)")
    entry_args(sp)
    sp.add_argument("--out", required=True, help="where the verified source goes")

    sp = sub.add_parser("prepare", help="tokenize a source into train.bin/val.bin/meta.json")
    entry_args(sp)
    sp.add_argument("--source", required=True, help="the downloaded source (file or folder)")
    sp.add_argument("--out-dir", required=True)
    sp.add_argument("--num-proc", type=int, default=1, help="tokenizer worker processes")

    sp = sub.add_parser("train", help="train a run (torchrun for several processes); extra --key=value override")
    entry_args(sp)
    sp.add_argument("--data-dir", help="prepared dataset folder (default results/data/DATASET)")
    sp.add_argument("--out-dir", help="run folder (default results/runs/NAME)")

    sp = sub.add_parser("sample", help="generate text from a checkpoint or pretrained GPT-2")
    sp.add_argument("--checkpoint", help="model.pt of a run, a nanoGPT ckpt.pt, or a run folder (its model.pt, "
                                         "else nanoGPT's ckpt.pt)")
    sp.add_argument("--init-from", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local HF directory")
    sp.add_argument("--meta", help="the dataset's meta.json, or nanoGPT's meta.pkl (read as plain data: nothing in "
                                   "it runs) when the checkpoint lacks it")
    sp.add_argument("--mirror")
    sp.add_argument("--start", default="\n", help="prompt text, or FILE:path")
    sp.add_argument("--num-samples", type=int, default=10)
    sp.add_argument("--max-new-tokens", type=int, default=500)
    sp.add_argument("--temperature", type=float, default=0.8)
    sp.add_argument("--top-k", type=_optional_int, default=200, help="keep the k likeliest tokens ('none': all)")
    sp.add_argument("--seed", type=int, default=1337)
    sp.add_argument("--device", default="auto")
    sp.add_argument("--dtype", default="auto")
    sp.add_argument("--out", help="write the samples here (default: stdout)")

    sp = sub.add_parser("eval", help="loss of a run or a pretrained GPT-2 on a prepared dataset")
    add_eval_arguments(sp)

    sp = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 folder or a nanoGPT ckpt.pt")
    sp.add_argument("--checkpoint", required=True, help="model.pt of a run, or a nanoGPT ckpt.pt")
    sp.add_argument("--out", required=True, help="the folder to write (replaced if it holds an earlier export)")
    sp.add_argument("--format", choices=("hf", "nanogpt"), default="hf",
                    help="hf: config.json, model.safetensors, tokenizer.json (default); "
                         "nanogpt: ckpt.pt, and meta.pkl for char models")
    sp.add_argument("--meta", help="meta.json or nanoGPT meta.pkl of the dataset (default: the checkpoint's own)")
    sp.add_argument("--mirror", help="where encoder.json/vocab.bpe are (default: config `mirror`, $NANOGPT_MIRROR "
                                     "or the package's copy)")

    sp = sub.add_parser("bench", help="time training iterations of a model shape (nanoGPT's bench.py)")
    add_bench_arguments(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("train", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "train":
            cmd_train(args, extra)
        elif args.command == "bench":
            cmd_bench(args, extra)
        else:
            {"download": cmd_download, "prepare": cmd_prepare, "sample": cmd_sample, "eval": cmd_eval,
             "export": cmd_export}[
                args.command](args)
    except (UserError, OSError) as e:  # OSError: missing/unreadable files, network; anything else is a bug
        message = f"nanogpt {args.command}: error: {_one_line(e)}"
        print(message, file=sys.stderr)
        from nanogpt.launch import report_user_error

        report_user_error(message)
        return 2
    return 0


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {str(error.filename)!r}"
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())

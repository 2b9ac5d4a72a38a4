"""`nanogpt <command>`: every pipeline step, also usable without Snakemake, and the report rules' summary.

Every rule passes its entry the same way: `--spec '{...}'` (a dataset as written, a run, sample or evaluation
resolved), its files as flags, and `--mirror DIR`. By hand, download, prepare and train also read an entry of
config.yaml (`--config config.yaml --name NAME`), train and bench take nanoGPT-style `--key=value` overrides,
and sample and eval take each setting as a flag.
Errors a user can fix are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from nanogpt import fileio, paths, threads
from nanogpt.errors import ConfigError, UserError
from nanogpt.names import suggest
from nanogpt.runlock import LOCK_NAME
from nanogpt.settings import CORPUS_DEFAULTS, TEXT_DEFAULTS, EvalSettings, SampleSettings

# The `sample` and `eval` flags are the settings' fields, with the settings' own defaults (nanogpt.settings).
SAMPLE_KEYS = tuple(f.name for f in fields(SampleSettings) if f.name != "model")
EVAL_KEYS = tuple(f.name for f in fields(EvalSettings))


def _entry(args: argparse.Namespace, section: str) -> tuple[str, dict]:
    """The named entry of a config.yaml section, or the JSON given with --spec."""
    if args.spec:
        if args.config:  # one source of settings: the other would be ignored without a word
            raise ConfigError(f"--config {args.config!r} given with --spec: expected one of them (--spec is the "
                              "whole entry; --config FILE --name NAME reads it from a config file)")
        spec = _spec_json(args.spec)
        from nanogpt.names import check_name

        name = check_name(args.name or spec.get("name", section.removesuffix("s")), f"--name: {section.removesuffix('s')}")
        return name, spec
    if not args.config or not args.name:
        raise ConfigError(f"give --spec JSON, or --config FILE with --name of an entry under '{section}'")
    from nanogpt.names import check_name

    check_name(args.name, f"--name: {section.removesuffix('s')}")
    from nanogpt.configfile import load_yaml

    cfg = load_yaml(args.config)
    entries = cfg.get(section) or {}
    if section == "runs" and isinstance(entries, dict):
        from nanogpt.config import inherit_runs

        entries = inherit_runs(entries)
    if args.name not in entries:
        raise ConfigError(f"no {section} entry named {args.name!r} in {args.config}{suggest(args.name, list(entries))}")
    entry = dict(entries[args.name])
    if cfg.get("mirror") and not getattr(args, "mirror", None):
        args.mirror = cfg["mirror"]
    return args.name, entry


def _spec_json(text: str, flag: str = "--spec") -> dict:
    """--spec: one entry as config.yaml writes it, every setting resolved (how every rule passes its entry to its
    step: a dataset with its source, a run, a sample or an evaluation with where its model comes from), nested
    no deeper than fileio.JSON_MAX_DEPTH."""
    spec = fileio.parse_json(text, flag, ConfigError)
    if not isinstance(spec, dict):
        raise ConfigError(f"{flag} is {type(spec).__name__} JSON: expected a JSON object")
    return spec


def _model_and_settings(args: argparse.Namespace, keys: tuple[str, ...]) -> tuple[dict, dict]:
    """A sample's or eval's model source ({"checkpoint": PATH} or {"init_from": ID_OR_DIR}) and its settings:
    from --spec (what the rules pass: the resolved entry) or, by hand, from the flags given (the settings'
    own defaults fill in the rest)."""
    flags = {k: getattr(args, k) for k in keys if hasattr(args, k)}  # the settings flags default to absent
    source = {k: getattr(args, k) for k in ("checkpoint", "init_from") if getattr(args, k)}
    if args.spec:
        if flags or source:
            given = ", ".join("--" + k.replace("_", "-") for k in [*source, *flags])
            raise ConfigError(f"{given} given with --spec: expected the settings in --spec only, or flags only")
        spec = _spec_json(args.spec)
        source = {k: spec.pop(k) for k in ("checkpoint", "init_from") if k in spec}
        if len(source) != 1:
            raise ConfigError(f"--spec has {' and '.join(source) or 'neither checkpoint nor init_from'}: expected "
                              "exactly one of them")
        return source, spec
    if len(source) != 1:
        raise ConfigError("give --checkpoint PATH or --init-from ID_OR_DIR: expected exactly one of them (a run's "
                          "model.pt or a nanoGPT ckpt.pt; gpt2*, a hub id or a local Hugging Face folder)")
    return source, flags


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


def _bool_or_auto(text: str) -> bool | str:
    """true/false/auto for --compile."""
    value = {"true": True, "false": False, "auto": "auto"}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected true, false or auto")
    return value


def cmd_download(args: argparse.Namespace) -> None:
    from nanogpt.data.prepare import download

    name, spec = _entry(args, "datasets")
    with _no_empty_dir(Path(args.out).parent):
        download(spec, args.out, mirror=args.mirror, name=name)


def cmd_prepare(args: argparse.Namespace) -> None:
    # Preparing data needs no torch, but `datasets` imports it when installed (+185 MB, +1 s per process):
    # its documented switch keeps it out of this process and the tokenizer workers forked from it.
    os.environ.setdefault("USE_TORCH", "0")
    from nanogpt.data.entry import check_dataset
    from nanogpt.data.prepare import describe_normalization, prepare, prepare_path, split_warnings

    if args.text:  # no config: the file itself, as a `path:` dataset named after its folder
        given = {"tokenizer": args.tokenizer, "val_fraction": args.val_fraction}
        name, spec = Path(args.out_dir).name, {"path": args.text, **{k: v for k, v in given.items() if v is not None}}
        meta = prepare_path(spec, args.out_dir, num_proc=args.num_proc, mirror=args.mirror, name=name,
                            vocab_metas=args.vocab_meta)
    else:
        name, spec = _entry(args, "datasets")
        if not args.source:
            raise ConfigError("give --source (the downloaded source of a config entry) or --text FILE")
        meta = prepare(spec, args.source, args.out_dir, num_proc=args.num_proc, mirror=args.mirror, name=name,
                       vocab_metas=args.vocab_meta)
    print(f"{name}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, vocab {meta['vocab_size']}")
    note = describe_normalization(meta, check_dataset(spec, name))
    if note:
        print(f"{name}: {note}")
    if meta.get("vocab_from"):
        print(f"{name}: the vocabulary also holds the characters of {', '.join(meta['vocab_from'])}")
    for warning in split_warnings(meta):
        print(f"nanogpt prepare: warning: {warning}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> None:
    from nanogpt.config import resolve_run, settings_warnings
    from nanogpt.configfile import parse_overrides
    from nanogpt.settings import non_defaults

    name, spec = _entry(args, "runs")
    run = resolve_run(spec, name, parse_overrides(args.overrides))
    if args.spec and "model" not in spec and run.init_from == "scratch" and not non_defaults(run.model):
        raise ConfigError('--spec has no "model" section: expected the model to train from scratch, e.g. '
                          '"model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}, or "model": {} '
                          "for the default GPT-2 size (124M parameters)")
    if not args.pipeline:  # the pipeline said so before any job
        for warning in settings_warnings(run, name):
            print(f"nanogpt train: warning: {warning}", file=sys.stderr)
    data_dir = Path(args.data_dir or paths.DATA_DIR.format(dataset=run.dataset))
    out_dir = Path(args.out_dir or paths.CLI_RUN_DIR.format(run=name))
    if not args.pipeline:
        _refuse_pipeline_folder(out_dir)
    world = run.launch.nproc_per_node * run.launch.nnodes
    if world > 1 and "WORLD_SIZE" not in os.environ:
        if run.launch.nnodes > 1:
            raise ConfigError(
                f"runs.{name}.launch.nnodes={run.launch.nnodes}: a multi-node run must be started by torchrun on "
                "every node (see README, 'Multi-node'); expected nnodes=1 when started by `nanogpt train`"
            )
        cmd = [sys.executable, "-m", "nanogpt.launch", f"--run-device={run.train.device}", "--standalone",
               f"--nproc_per_node={run.launch.nproc_per_node}", "-m", "nanogpt.cli", *sys.argv[1:]]
        os.execv(sys.executable, cmd)
    if world == 1 and run.train.device in ("cpu", "auto"):  # alone, or torchrun's only worker (the pipeline)
        tokens = run.train.batch_size * run.model.block_size
        _choose_waits(threads.planned_threads("auto", run.model.n_embd, tokens))
    from nanogpt.train import train

    try:
        with _no_empty_dir(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
            if args.pipeline and int(os.environ.get("RANK", "0")) == 0:
                (out_dir / paths.PIPELINE_MARKER).touch()
            train(run, data_dir, out_dir, needs_gpu=args.gpus > 0, mirror=args.mirror)
    except threads.ContendedError:
        threads.continue_passive()  # after the run folder's lock and files are released


def _choose_waits(thread_count: int) -> None:
    """Spinning or sleeping OpenMP waits for a process that will run on `thread_count` threads (nanogpt.threads):
    a single-process training, or a sampler. Only before torch loads: libgomp reads its policy then."""
    if "torch" not in sys.modules:  # else a caller imported torch, and the policy is read already
        threads.set_wait_policy(threads.choose_waits(thread_count))


def _refuse_pipeline_folder(out_dir: Path) -> None:
    """The train rule's run folders are the pipeline's: a model trained there by hand would feed its samples,
    evals and summary as if Snakemake had made it."""
    pipeline_dir = Path(paths.RUNS).resolve() in out_dir.resolve().parents and Path(".snakemake").is_dir()
    if (out_dir / paths.PIPELINE_MARKER).exists() or pipeline_dir:
        raise ConfigError(
            f"--out-dir {str(out_dir)!r} is a run folder of the pipeline: expected another folder (the default is "
            f"{paths.CLI_RUN_DIR.replace('{run}', 'NAME')}), or `snakemake` to train the pipeline's runs"
        )


def cmd_sample(args: argparse.Namespace) -> None:
    from nanogpt.config import resolve_sample

    source, given = _model_and_settings(args, SAMPLE_KEYS)
    path = next(iter(source.values()))
    if args.interactive and "num_samples" not in given:
        given["num_samples"] = 1  # one continuation per prompt unless asked
    settings = resolve_sample({"model": path, **given}, f"samples.{args.name}" if args.name else "sample")
    if args.out and (args.stream or args.interactive):
        raise ConfigError(f"--out {args.out!r} with --{'interactive' if args.interactive else 'stream'}: expected "
                          "one of them (--stream and --interactive write to the terminal)")
    if settings.device in ("cpu", "auto") and not (args.stream or args.interactive):
        _choose_waits(threads.available_cpus())  # text already on a terminal could not be drawn again
    try:
        with _gpu_slot(settings.device):
            _sample(args, path, settings)
    except threads.ContendedError as e:
        print(f"nanogpt sample: {e}; drawing the samples again in a fresh process whose OpenMP threads sleep when "
              "they wait (the same threads, so the same samples)", file=sys.stderr)
        threads.continue_passive()


def _gpu_slot(device: str) -> contextlib.AbstractContextManager:
    """One GPU claimed for this process (nanogpt.launch.claimed_gpus): queue behind trainings, not beside them."""
    from nanogpt.launch import claimed_gpus

    return claimed_gpus(1, device in ("auto", "cuda"), lambda line: print(line, file=sys.stderr))


def _sample(args: argparse.Namespace, source: str, settings: SampleSettings) -> None:
    import torch

    from nanogpt.runtime import place
    from nanogpt.sample import generate_samples, load_model_and_tokenizer, write_samples

    model, tok = load_model_and_tokenizer(source, meta_path=args.meta, mirror=args.mirror)
    placement = place(settings.device, settings.dtype, model.config.n_embd)
    on_cpu = placement.device.type == "cpu"
    if on_cpu:
        torch.set_num_threads(threads.available_cpus())  # what the waits were chosen for (a container's quota)
    if args.interactive:
        _interactive(model, tok, settings, placement)
        return
    spinning = on_cpu and os.environ.get(threads.WAITS_ENV) == threads.SPIN
    samples, tps = generate_samples(model, tok, settings, placement, write=_terminal if args.stream else None,
                                    each_token=threads.StepWatch() if spinning else None)
    if args.stream:
        _terminal("\n")
    elif args.out:
        write_samples(args.out, samples)
        from nanogpt.sample import add_samples_to_tensorboard

        add_samples_to_tensorboard(source, samples, Path(args.out).stem)  # a run's samples beside its curves
    else:
        from nanogpt.sample import SEPARATOR

        print(SEPARATOR.join(samples))
    count = torch.get_num_threads()
    where = f" on {count} CPU thread{'s' * (count != 1)}, {threads.describe_waits()}" if on_cpu else ""
    print(f"{settings.num_samples} samples, {tps:.1f} tokens/s{where} (seed {settings.seed}: the same settings draw "
          "the same samples; another seed draws others)", file=sys.stderr)


def _terminal(text: str) -> None:
    """Streamed text, shown as it comes even through a pipe."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _interactive(model, tok, settings: SampleSettings, placement) -> None:
    """Prompts read from stdin one line at a time, each answered as it is generated, until EOF (Ctrl-D)."""
    from nanogpt.sample import interactive

    tty = sys.stdin.isatty()
    if tty:
        print("type a prompt and Enter (FILE:path reads one from a file); Ctrl-C stops a continuation, Ctrl-D quits",
              file=sys.stderr)

    def prompts() -> Iterator[str]:
        while True:
            if tty:
                try:
                    line = input("> ")
                except (EOFError, KeyboardInterrupt):
                    print(file=sys.stderr)
                    return
            else:
                line = sys.stdin.readline()
                if not line:  # EOF
                    return
            yield line.rstrip("\r\n")

    def report(message: str) -> None:
        print(f"nanogpt sample: error: {' '.join(message.split())}", file=sys.stderr)

    interactive(model, tok, settings, placement, prompts(), _terminal, report)


def cmd_serve(args: argparse.Namespace) -> None:
    from nanogpt.config import resolve_sample
    from nanogpt.runtime import place
    from nanogpt.sample import load_model_and_tokenizer
    from nanogpt.serve import REQUEST_TOKENS_MAX, make_server

    args.spec = None
    source, given = _model_and_settings(args, SAMPLE_KEYS)
    given.setdefault("num_samples", 1)
    path = next(iter(source.values()))
    settings = resolve_sample({"model": path, **given}, "serve")
    if settings.num_samples * settings.max_new_tokens > REQUEST_TOKENS_MAX:
        raise ConfigError(f"--num-samples {settings.num_samples} x --max-new-tokens {settings.max_new_tokens}: "
                          f"expected at most {REQUEST_TOKENS_MAX} tokens per request")
    with _gpu_slot(settings.device):
        model, tok = load_model_and_tokenizer(path, meta_path=args.meta, mirror=args.mirror)
        server = make_server(model, tok, settings, place(settings.device, settings.dtype, model.config.n_embd),
                             args.host, args.port)
        host, port = server.server_address[:2]
        print(f"nanogpt serve: {path} on http://{host}:{port} (POST /generate {{\"prompt\": ...}}; Ctrl-C stops)",
              file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def cmd_eval(args: argparse.Namespace) -> None:
    from nanogpt.config import resolve_eval

    source, given = _model_and_settings(args, EVAL_KEYS + ("model", "dataset"))
    names = {"model": given.pop("model", None), "dataset": given.pop("dataset", None)}
    settings = resolve_eval(given, "eval")
    with _gpu_slot(settings.device):
        _eval(args, source, names, settings)


def _eval(args: argparse.Namespace, source: dict, names: dict, settings: EvalSettings) -> None:
    from nanogpt import checkpoint as ckpt_io
    from nanogpt import fileio
    from nanogpt.evaluate import evaluate
    from nanogpt.runtime import place

    if "init_from" in source:
        from nanogpt.pretrained import load_pretrained

        model = load_pretrained(source["init_from"], mirror=args.mirror)
    else:
        model, _ = ckpt_io.load_model(source["checkpoint"])
    path = next(iter(source.values()))
    placement = place(settings.device, settings.dtype, model.config.n_embd)
    result = {"model": names["model"] or path, "dataset": names["dataset"] or Path(args.data_dir).name,
              "source": str(path), "params": model.get_num_params()}
    result.update(evaluate(model, args.data_dir, settings, placement))
    result.update(device=str(placement.device), dtype=placement.dtype_name)
    if args.out:
        fileio.write_json(args.out, result)
    else:
        print(json.dumps(result, indent=2))


def cmd_hellaswag_fetch(args: argparse.Namespace) -> None:
    from nanogpt.hellaswag import fetch_items

    fetch_items(_spec_json(args.source), args.out, mirror=args.mirror)


def cmd_hellaswag_score(args: argparse.Namespace) -> None:
    from nanogpt.hellaswag import resolve_settings
    from nanogpt.settings import HellaSwagSettings

    keys = tuple(f.name for f in fields(HellaSwagSettings)) + ("model",)
    source, given = _model_and_settings(args, keys)
    model_name = given.pop("model", None)
    settings = resolve_settings({"task": "hellaswag", **given}, f"evals.{args.name}" if args.name else "hellaswag")
    with _gpu_slot(settings.device):
        _hellaswag(args, source, model_name, settings)


def _hellaswag(args: argparse.Namespace, source: dict, model_name: str | None, settings) -> None:
    from nanogpt import fileio
    from nanogpt.hellaswag import check_encodable, read_items, score
    from nanogpt.runtime import place
    from nanogpt.sample import load_model_and_tokenizer

    items, total = read_items(args.items, settings.limit)  # every item checked before the model loads
    path = next(iter(source.values()))
    model, tok = load_model_and_tokenizer(path, mirror=args.mirror)
    check_encodable(items, tok, f"evals.{args.name}" if args.name else str(path))
    placement = place(settings.device, settings.dtype, model.config.n_embd)
    result = {"task": "hellaswag", "name": args.name, "model": model_name or path, "source": str(path),
              "params": model.get_num_params(), "limit": settings.limit, "items_in_file": total,
              "items_file": str(args.items)}
    result.update(score(model, tok, items, placement))
    result.update(device=str(placement.device), dtype=placement.dtype_name)
    limit = f" (limit: first {settings.limit} of {total} items)" if settings.limit else ""
    print(f"HellaSwag {result['model']}: acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f} on "
          f"{result['items']} items{limit}", file=sys.stderr)
    if args.out:
        fileio.write_json(args.out, result)
    else:
        print(json.dumps(result, indent=2))


def cmd_export(args: argparse.Namespace) -> None:
    meta = None
    if args.meta:
        from nanogpt.sample import _read_meta

        meta = _read_meta(Path(args.meta))
    if args.format == "nanogpt":
        from nanogpt.interop import export_nanogpt

        out = export_nanogpt(args.checkpoint, args.out, meta=meta, force=args.force)
        extra = " and meta.pkl" if (out / "meta.pkl").is_file() else ""
        print(f"wrote {out / 'ckpt.pt'}{extra} (nanoGPT: python sample.py --out_dir={out})")
        return
    from nanogpt.exportdir import forcing
    from nanogpt.pretrained import export_hf

    with forcing(args.force):
        out = export_hf(args.checkpoint, args.out, meta=meta, mirror=args.mirror)
    tok = "+ tokenizer: AutoTokenizer" if (out / "tokenizer.json").is_file() else "no tokenizer: pass --meta"
    context = json.loads((out / "config.json").read_text())["n_positions"]
    print(f"wrote {out} (Hugging Face GPT-2: AutoModelForCausalLM.from_pretrained; {tok}); context {context} "
          f"tokens: generation stops at max_length={context}, prompt included (generation_config.json)")


def cmd_bench(args: argparse.Namespace) -> None:
    from nanogpt.bench import bench
    from nanogpt.configfile import parse_overrides

    result = bench(parse_overrides(args.overrides), args.steps, args.warmup, args.data_dir, args.threads)
    print(json.dumps(result, indent=2))


def cmd_summary_table(args: argparse.Namespace) -> None:
    from nanogpt.report.summary import write_table

    print(f"{write_table(args.results, args.csv, args.md)} rows -> {args.csv}, {args.md}")


def cmd_summary_curve(args: argparse.Namespace) -> None:
    from nanogpt.report.curves import plot_curve

    print(f"{plot_curve(args.run_dir, args.out, args.title)} points -> {args.out}")


def cmd_summary_sweep(args: argparse.Namespace) -> None:
    from nanogpt.report.sweeps import summarize

    done = summarize(_spec_json(args.sweep, "--sweep"), args.runs_dir, args.out_dir)
    fit = done["fit"]
    print(f"{len(done['rows'])} points -> {args.out_dir}" + (f"; alpha={fit['alpha']:.4f} E={fit['E']:.4f}"
                                                             if fit else ""))


def cmd_summary_run_page(args: argparse.Namespace) -> None:
    from nanogpt.report.pages import write_run_page

    write_run_page(args.metrics, args.out, args.title, args.curve_png, args.run_dir)
    print(f"wrote {args.out}")


def cmd_summary_sample_page(args: argparse.Namespace) -> None:
    from nanogpt.report.pages import write_sample_page

    write_sample_page(args.sample, args.out, args.title, _spec_json(args.spec) if args.spec else None)
    print(f"wrote {args.out}")


def cmd_summary_baselines(args: argparse.Namespace) -> None:
    from nanogpt.report.summary import baselines

    baselines(args.files, args.out, args.hellaswag)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` shows each flag's default (argparse's own formatter), except for flags that have none; the
    epilog (the settings list) as written; and each flag once, without its underscore spelling."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        shown = [o for o in action.option_strings if "_" not in o] or action.option_strings
        saved, action.option_strings = action.option_strings, shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = saved


class _Parser(argparse.ArgumentParser):
    """Every --dashed-flag also answers to --dashed_flag, the spelling of nanoGPT's --key=value overrides."""

    def add_argument(self, *names: str, **kwargs):
        aliases = ["--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:]]
        return super().add_argument(*names, *aliases, **kwargs)


def _optional_int(text: str) -> int | None:
    """An integer, or none/null for "no limit" (what `top_k: null` means in config.yaml)."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or 'none'") from None


def _version() -> str:
    """The installed package's version (pyproject.toml), as pip reports it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nanogpt-workflow")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _entry_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--config", help="config.yaml to read the entry from")
    sp.add_argument("--name", help="the entry's name in config.yaml")
    sp.add_argument("--spec", help="the entry as JSON (what the Snakemake rules pass)")
    sp.add_argument("--mirror", help="local mirror directory (default: config `mirror` or $NANOGPT_MIRROR)")


def _model_source_args(sp: argparse.ArgumentParser, checkpoint_help: str) -> None:
    sp.add_argument("--checkpoint", help=checkpoint_help)
    sp.add_argument("--init-from", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, a hub id or a local HF directory")
    sp.add_argument("--mirror", help="local mirror directory: GPT-2 BPE files and `<name>/` GPT-2 weight folders "
                                     "(default: $NANOGPT_MIRROR)")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("download", help="fetch a dataset's source, sha256-checked (or from the mirror)",
                        formatter_class=_HelpFormatter)
    _entry_args(sp)
    sp.add_argument("--out", required=True, help="where the verified source goes")
    sp.set_defaults(func=cmd_download)

    sp = sub.add_parser("prepare", help="tokenize a source into train.bin/val.bin/meta.json",
                        formatter_class=_HelpFormatter)
    _entry_args(sp)
    sp.add_argument("--source", help="the downloaded source (file or folder)")
    sp.add_argument("--text", help="your own data instead of a config entry, as a `path:` entry takes it: a text "
                    "file, or a .jsonl/.parquet/.csv file, a folder or a glob of documents")
    sp.add_argument("--tokenizer", choices=("char", "gpt2"),
                    help=f"with --text: the tokenizer (default: {TEXT_DEFAULTS['tokenizer']} for a text, "
                    f"{CORPUS_DEFAULTS['tokenizer']} for documents)")
    sp.add_argument("--val-fraction", type=float,
                    help=f"with --text: the share kept for validation (default: {TEXT_DEFAULTS['val_fraction']} of a "
                    f"text, {CORPUS_DEFAULTS['val_fraction']} of the documents)")
    sp.add_argument("--vocab-meta", nargs="*", metavar="META",
                    help="the meta.json of each of the entry's vocab_from datasets, in order (default: "
                    f"{paths.META.format(dataset='NAME')} of each)")
    sp.add_argument("--out-dir", required=True, help="folder for train.bin, val.bin and meta.json")
    sp.add_argument("--num-proc", type=int, default=1, help="tokenizer worker processes")
    sp.set_defaults(func=cmd_prepare)


def add_train_command(sub: argparse._SubParsersAction) -> None:
    from nanogpt.settings import settings_help

    sp = sub.add_parser("train", help="train a run (torchrun for several processes); extra --key=value override",
                        formatter_class=_HelpFormatter, epilog=settings_help())
    _entry_args(sp)
    sp.add_argument("--data-dir", help=f"prepared dataset folder (default: {paths.DATA_DIR} of the run's dataset)")
    sp.add_argument("--out-dir", help=f"run folder (default: {paths.CLI_RUN_DIR.replace('{run}', '{name}')}; "
                                      "never a folder of the pipeline's)")
    sp.add_argument("--gpus", type=int, default=0,
                    help="GPUs per node the job was given (the pipeline passes resources.gpus): with device auto, "
                         "finding no GPU is then an error instead of a silent CPU run")
    sp.add_argument("--pipeline", action="store_true",
                    help="set by the train rule: the run folder is the pipeline's (marked, and refused to plain "
                         "`nanogpt train`)")
    sp.set_defaults(func=cmd_train, overrides_allowed=True)


def _step_spec_args(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("--spec", help=f"the resolved {what} as JSON, with its checkpoint or init_from (what the "
                                   "Snakemake rule passes): instead of the settings flags")


def _setting_flags(sp: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                   defaults: dict | None = None) -> None:
    """One flag per declared setting of `cls` (nanogpt.settings), absent unless given: the settings fill in their
    own default (or the command's, `defaults`), which the help shows."""
    from nanogpt.settings import declared, default_of, field_types, show_default

    types = field_types(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, default_of(f))
        help = f"{declared(f).help} (default: {show_default(default)})"
        sp.add_argument("--" + f.name.replace("_", "-"), default=argparse.SUPPRESS, help=help,
                        type=_flag_type(types[f.name]))


def _flag_type(kind: object):
    """How a flag's text becomes the setting's type: int, float, int-or-none, true/false/auto, text."""
    import typing

    kinds = set(typing.get_args(kind) or (kind,))
    if kinds == {int}:
        return int
    if kinds == {float}:
        return float
    if kinds == {int, type(None)}:
        return _optional_int
    if bool in kinds:
        return _bool_or_auto
    return str


def add_sample_command(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("sample", help="generate text from a checkpoint or pretrained GPT-2",
                        formatter_class=_HelpFormatter)
    _model_source_args(sp, "model.pt of a run, a nanoGPT ckpt.pt, or a run folder (its model.pt, else nanoGPT's "
                           "ckpt.pt)")
    _step_spec_args(sp, "`samples:` entry")
    sp.add_argument("--name", help="the `samples:` entry's name (for its error messages)")
    sp.add_argument("--meta", help="the dataset's meta.json, or nanoGPT's meta.pkl (read as plain data: nothing in "
                                   "it runs) when the checkpoint lacks it")
    _setting_flags(sp, SampleSettings, skip=("model",))
    sp.add_argument("--out", help="write the samples here (default: stdout)")
    sp.add_argument("--stream", action="store_true", help="print each sample as it is generated (same text)")
    sp.add_argument("--interactive", action="store_true",
                    help="read prompts from stdin, one a line, and stream num_samples continuations of each "
                         "(default 1) until EOF (Ctrl-D)")
    sp.set_defaults(func=cmd_sample)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("serve", help="answer POST /generate over HTTP (a minimal endpoint; stdlib only)",
                        formatter_class=_HelpFormatter)
    _model_source_args(sp, "model.pt of a run, a nanoGPT ckpt.pt, or a run folder")
    sp.add_argument("--meta", help="the dataset's meta.json, or nanoGPT's meta.pkl, when the checkpoint lacks it")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (another than 127.0.0.1 lets other "
                                                        "machines in: there is no authentication)")
    sp.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed)")
    _setting_flags(sp, SampleSettings, skip=("model", "start"), defaults={"num_samples": 1})  # a request's defaults
    sp.set_defaults(func=cmd_serve)


def add_eval_arguments(sp: argparse.ArgumentParser) -> None:
    _model_source_args(sp, "model.pt of a run, or a nanoGPT ckpt.pt")
    _step_spec_args(sp, "evaluation")
    sp.add_argument("--data-dir", required=True, help="prepared dataset folder (train.bin, val.bin, meta.json)")
    sp.add_argument("--out", help="write the result JSON here (default: stdout)")
    sp.add_argument("--model-name", dest="model", default=argparse.SUPPRESS,
                    help="name recorded in the result (default: the checkpoint or init-from)")
    sp.add_argument("--dataset-name", dest="dataset", default=argparse.SUPPRESS,
                    help="name recorded in the result (default: the data folder's name)")
    _setting_flags(sp, EvalSettings)


def add_hellaswag_command(sub: argparse._SubParsersAction) -> None:
    from nanogpt.settings import HellaSwagSettings

    sp = sub.add_parser("hellaswag", help="HellaSwag accuracy of a run or a GPT-2 (llm.c's completion-style scoring)",
                        formatter_class=_HelpFormatter)
    steps = sp.add_subparsers(dest="hellaswag_command", required=True)
    f = steps.add_parser("fetch", help="download the items file, checksum-verified (or take it from the mirror)",
                         formatter_class=_HelpFormatter)
    f.add_argument("--source", required=True, help='{"url": ..., "sha256" or "git_blob_sha1": ...} as JSON')
    f.add_argument("--mirror", help="local mirror directory (default: $NANOGPT_MIRROR)")
    f.add_argument("--out", required=True, help="where the verified file goes")
    f.set_defaults(func=cmd_hellaswag_fetch)
    s = steps.add_parser("score", help="acc and acc_norm of a model on a HellaSwag jsonl file",
                         formatter_class=_HelpFormatter)
    _model_source_args(s, "model.pt of a run, or a nanoGPT ckpt.pt")
    _step_spec_args(s, "HellaSwag `evals:` entry")
    s.add_argument("--name", help="the `evals:` entry's name (recorded, and in error messages)")
    s.add_argument("--items", required=True, help="HellaSwag's jsonl (results/hellaswag/hellaswag_val.jsonl)")
    s.add_argument("--out", help="write the result JSON here (default: stdout)")
    s.add_argument("--model-name", dest="model", default=argparse.SUPPRESS,
                   help="name recorded in the result (default: the checkpoint or init-from)")
    _setting_flags(s, HellaSwagSettings)
    s.set_defaults(func=cmd_hellaswag_score)


def cmd_restart(args: argparse.Namespace) -> None:
    from nanogpt import trajectory
    from nanogpt.runlock import run_folder_lock

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"--run-dir {str(run_dir)!r} is not a folder: expected a run folder (results/runs/NAME)")
    with run_folder_lock(run_dir, wait_s=0):  # never under a running trainer
        archive = trajectory.archive_for_restart(run_dir)
    print(f"moved the run's records to {archive}/: the next training of this run starts from iteration 0 "
          "(snakemake --cores all, or nanogpt train)")


def add_restart_command(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("restart", help="start a run over on purpose: its checkpoints and model are set aside",
                        formatter_class=_HelpFormatter)
    sp.add_argument("--run-dir", required=True, help="the run folder, e.g. results/runs/NAME")
    sp.set_defaults(func=cmd_restart)


def add_export_command(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 folder or a nanoGPT ckpt.pt",
                        formatter_class=_HelpFormatter)
    sp.add_argument("--checkpoint", required=True, help="model.pt of a run, or a nanoGPT ckpt.pt")
    sp.add_argument("--out", required=True, help="the folder to write (replaced if it holds an earlier export)")
    sp.add_argument("--force", action="store_true",
                    help="write into a non-empty folder that is not an earlier export: files named like the "
                         "export's are replaced, nothing else in it is deleted")
    sp.add_argument("--format", choices=("hf", "nanogpt"), default="hf",
                    help="hf: config.json, model.safetensors, tokenizer.json; "
                         "nanogpt: ckpt.pt, and meta.pkl for char models")
    sp.add_argument("--meta", help="meta.json or nanoGPT meta.pkl of the dataset (default: the checkpoint's own)")
    sp.add_argument("--mirror", help="where encoder.json/vocab.bpe are (default: config `mirror`, $NANOGPT_MIRROR "
                                     "or the package's copy)")
    sp.set_defaults(func=cmd_export)


def add_bench_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    sp.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    sp.add_argument("--data-dir", help="prepared dataset to draw batches from (default: random tokens)")
    sp.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")


def add_summary_command(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("summary", help="what the report rules write: the summary table, loss curves, pages, sweeps and GPT-2 baselines",
                        formatter_class=_HelpFormatter)
    steps = sp.add_subparsers(dest="summary_command", required=True)
    t = steps.add_parser("table", help="summary.csv and .md from every metrics.json and eval JSON",
                         formatter_class=_HelpFormatter)
    t.add_argument("--results", default=paths.RESULTS, help="the results folder to read")
    t.add_argument("--csv", required=True, help="the CSV table to write")
    t.add_argument("--md", required=True, help="the Markdown table to write")
    t.set_defaults(func=cmd_summary_table)
    c = steps.add_parser("curve", help="a run's loss curve PNG from its TensorBoard events",
                         formatter_class=_HelpFormatter)
    c.add_argument("--run-dir", required=True, help="the run folder (its tb/ events)")
    c.add_argument("--out", required=True, help="the PNG to write")
    c.add_argument("--title", help="plot title (default: none)")
    c.set_defaults(func=cmd_summary_curve)
    b = steps.add_parser("baselines", help="GPT-2 eval JSONs beside nanoGPT's published losses",
                         formatter_class=_HelpFormatter)
    b.add_argument("files", nargs="+", help="eval JSONs of gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    b.add_argument("--hellaswag", nargs="*", default=[], help="HellaSwag result JSONs of the same sizes")
    b.add_argument("--out", required=True, help="the Markdown table to write")
    b.set_defaults(func=cmd_summary_baselines)
    w = steps.add_parser("sweep", help="a sweep's summary.csv/.md, plots, hparams events (and fit.json)",
                         formatter_class=_HelpFormatter)
    w.add_argument("--sweep", required=True, help="the sweep's points as JSON (the sweep rules' Pipeline.sweep_spec)")
    w.add_argument("--runs-dir", default=paths.RUNS, help="where the points' run folders are")
    w.add_argument("--out-dir", required=True, help="the sweep's folder to write")
    w.set_defaults(func=cmd_summary_sweep)
    add_page_commands(steps)


def add_page_commands(steps: argparse._SubParsersAction) -> None:
    """The report's run and sample pages (shell jobs, not `run:` blocks, which re-read the workflow per job)."""
    r = _page_parser(steps, "run-page", "a run's report page: final numbers, loss curve and resolved settings",
                     "--metrics", "the run's metrics.json", cmd_summary_run_page)
    r.add_argument("--curve-png", help="embed this loss-curve PNG (small pipelines)")
    r.add_argument("--run-dir", help="else draw an SVG thumbnail from this run folder's events")
    s = _page_parser(steps, "sample-page", "a sample's report page: its texts under the settings that drew them",
                     "--sample", "the sample file", cmd_summary_sample_page)
    s.add_argument("--spec", help="the `samples:` entry as JSON (its settings are shown)")


def _page_parser(steps: argparse._SubParsersAction, name: str, help: str, source: str, source_help: str,
                 func) -> argparse.ArgumentParser:
    page = steps.add_parser(name, help=help, formatter_class=_HelpFormatter)
    page.add_argument(source, required=True, help=source_help)
    page.add_argument("--out", required=True, help="the HTML page to write")
    page.add_argument("--title", required=True, help="the page's title")
    page.set_defaults(func=func)
    return page


def cmd_schema(args: argparse.Namespace) -> None:
    from nanogpt import fileio
    from nanogpt.pipeline.schema import schema_yaml, settings_markdown

    for path, text in ((args.out, schema_yaml()), (args.docs, settings_markdown())):
        if path:
            fileio.write_text(path, text)
            print(f"wrote {path}")
    if not (args.out or args.docs):
        print(schema_yaml(), end="")


def add_schema_command(sub: argparse._SubParsersAction) -> None:
    from nanogpt.pipeline.schema import DOCS_PATH, SCHEMA_PATH

    sp = sub.add_parser("schema", help="config.yaml's JSON schema and the settings reference, from the settings' "
                                       "declarations", formatter_class=_HelpFormatter)
    sp.add_argument("--out", help=f"write the schema here (the repository's copy: {SCHEMA_PATH}; default: stdout)")
    sp.add_argument("--docs", help=f"write the settings reference here (the repository's: {DOCS_PATH})")
    sp.set_defaults(func=cmd_schema)


def build_parser() -> argparse.ArgumentParser:
    """`nanogpt` and its subcommands; each subcommand's `func` runs it."""
    p = _Parser(prog="nanogpt", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    add_data_commands(sub)
    add_train_command(sub)
    add_sample_command(sub)
    add_serve_command(sub)
    sp = sub.add_parser("eval", help="loss of a run or a pretrained GPT-2 on a prepared dataset",
                        formatter_class=_HelpFormatter)
    add_eval_arguments(sp)
    sp.set_defaults(func=cmd_eval)
    add_hellaswag_command(sub)
    add_export_command(sub)
    add_restart_command(sub)
    sp = sub.add_parser("bench", help="time training iterations of a model shape (nanoGPT's bench.py); extra "
                                      "--key=value set the model", formatter_class=_HelpFormatter)
    add_bench_arguments(sp)
    sp.set_defaults(func=cmd_bench, overrides_allowed=True)
    add_summary_command(sub)
    add_schema_command(sub)
    return p


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand: its errors print its own usage, not the top-level one."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def main(argv: list[str] | None = None) -> int:
    threads.set_wait_policy()  # before torch is imported: sleeping OpenMP waits, unless a training spins (cmd_train)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "overrides_allowed", False):
        command = _subparser(parser, args.command)
        known = [o for a in command._actions for o in a.option_strings]
        hint = difflib.get_close_matches(extra[0].split("=")[0], known, n=1)
        command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {hint[0]}?)" if hint else ""))
    args.overrides = extra
    try:
        args.func(args)
    except (UserError, OSError) as e:  # OSError: missing/unreadable files, network; anything else is a bug
        if isinstance(e, OSError) and not e.filename:  # not about a path: where it came from is worth the lines
            traceback.print_exc()
        message = f"nanogpt {args.command}: error: {_one_line(e)}"
        print(message, file=sys.stderr)
        from nanogpt.launch import report_user_error

        report_user_error(message)
        return 2
    return 0


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {str(error.filename)!r}"
    return " ".join(str(error).splitlines())  # line breaks only: the spaces inside a quoted value stay


if __name__ == "__main__":
    sys.exit(main())

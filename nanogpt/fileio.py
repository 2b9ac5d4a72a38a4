"""Atomic writes, and bounded reads of the files we did not write.

Writes: every file a later step trusts is written to a temp name in the same folder, then renamed. Temp names
carry the writer's host and pid (`.model.pt.HOST-PID.XXXX.tmp`), so the next writer of the same file can tell a
temp file left by a killed process from one that a live process is still writing. Finished files get the
permissions the umask gives a new file (0644 under umask 022), not mkstemp's 0600.

Reads: metadata, manifests, prompts and configs come from users and other tools. Each is refused by its size
(a stat, before reading) over a named cap, and by its shape (nesting depth, YAML alias expansion) before any
walk over it, so a small crafted file costs milliseconds, never minutes; every refusal is one line naming the
file and the limit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nanogpt.errors import ConfigError, DiskFullError, UserError

# A write that fails with less than this much free space left is reported as a full disk: torch.save and
# numpy report ENOSPC as a generic I/O error ("basic_ios::clear: iostream error").
_NEARLY_FULL_BYTES = 64 * 1024 * 1024


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open()` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def _host() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def temp_tag() -> str:
    """HOST-PID of this process: the part of a temp name that tells a later writer whether it still runs."""
    return f"{_host()}-{os.getpid()}"


def left_by_dead_writer(name: str, prefix: str) -> bool:
    """Whether `name` (`<prefix>HOST-PID...`) is a temp left by a process of this host that no longer runs."""
    mine = f"{prefix}{_host()}-"
    pid = name[len(mine):].split(".", 1)[0] if name.startswith(mine) else ""
    return pid.isdigit() and not _pid_alive(int(pid))


def remove_stale_temps(dest: str | os.PathLike) -> list[Path]:
    """Delete temp files of `dest` whose writer (on this host) is dead; returns what was removed."""
    dest = Path(dest)
    removed = []
    prefix = f".{dest.name}.{_host()}-"
    if not dest.parent.is_dir():
        return removed
    for tmp in dest.parent.iterdir():
        if not (tmp.name.startswith(prefix) and tmp.name.endswith(".tmp")):
            continue
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# How libraries that do not raise OSError (safetensors' Rust I/O, C++ streams) word ENOSPC/EDQUOT.
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "os error 28", "disk quota exceeded", "os error 122")


def _disk_full(path: Path, error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(error, Exception) and any(t in str(error).lower() for t in _DISK_FULL_TEXT):
        return True
    if not isinstance(error, OSError | RuntimeError):
        return False
    try:
        return shutil.disk_usage(path).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def disk_full_error(dest: str | os.PathLike, error: BaseException) -> DiskFullError | None:
    """The one-line error for a write to `dest` that failed because its disk is full; None for other failures."""
    dest = Path(dest)
    folder = dest if dest.is_dir() else dest.parent
    if isinstance(error, UserError) or not _disk_full(folder, error):
        return None
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"no space left on the device holding {str(dest)!r} ({free}): expected room for the "
                         "file; free some space and rerun")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it is fsynced and renamed onto `dest`, on error removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, dest)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        full = disk_full_error(dest, e)
        if full is not None:
            raise full from e
        raise


def link_or_copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Make `dest` the same file as `src` (a hard link, else a copy), replacing `dest` atomically."""
    if os.path.exists(dest) and os.path.samefile(src, dest):
        return  # already: renaming a hard link over its twin is a no-op that would leave the temp link behind
    with atomic_path(dest) as tmp:
        try:
            tmp.unlink()
            os.link(src, tmp)
        except OSError:  # no hard links here (another device, some network file systems)
            shutil.copyfile(src, tmp)


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj: object) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The id git gives the file's content (`git hash-object`): sha1 of b"blob <size>\\0" + content. A file
    published in a git repository is pinned by it where no sha256 is published."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- bounded reads of untrusted files ------------------------------------------------------------------------

METADATA_MAX_BYTES = 32 * 2**20  # meta.json, source.json manifests: a char vocabulary of all of Unicode fits
SMALL_JSON_MAX_BYTES = 2**20  # files of a few keys: an export's record, a run's metrics.json
PROMPT_MAX_BYTES = 4 * 2**20  # a FILE: prompt (the model sees at most block_size tokens of it)
CONFIG_MAX_BYTES = 4 * 2**20  # config.yaml and every --configfile
CONFIG_MAX_NODES = 1_000_000  # YAML nodes once aliases are expanded (Snakemake's loaders walk the expansion)
JSON_MAX_DEPTH = 64  # nesting of any JSON or YAML we read; ours is at most 4 deep
YTE_KEY = "__use_yte__"  # makes Snakemake evaluate the config file's Python expressions (YTE templating)


def _cap_text(cap: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if cap >= size:
            return f"{cap / size:g} {unit}"
    return f"{cap:,} bytes"


def short_repr(value: object, limit: int = 60) -> str:
    """repr() for an error message: scalars cut to `limit` characters, containers by type and size only (a
    crafted file can hold a structure whose full repr never ends)."""
    if isinstance(value, dict | list | tuple | set | frozenset):
        return f"a {type(value).__name__} of {len(value)} entries"
    text = repr(value) if isinstance(value, str | bytes | int | float | bool | type(None)) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def not_a_file(path: str | os.PathLike) -> str:
    """What is at `path` instead of a regular file, for an error message: "does not exist", "is a folder", ..."""
    path = Path(path)
    if path.is_dir():
        return "is a folder"
    return "is not a regular file" if path.exists() else "does not exist"


def not_a_folder(path: str | os.PathLike) -> str:
    """What is at `path` instead of a folder, for an error message."""
    return "is a file, not a folder" if Path(path).exists() else "does not exist"


def read_capped(path: str | os.PathLike, cap: int, what: str, error: type[UserError] = UserError) -> bytes:
    """The bytes of regular file `path`, refused (by its size, before reading) when larger than `cap`."""
    path = Path(path)
    label = f"{what} {str(path)!r}"
    if not path.is_file():
        raise error(f"{label} {not_a_file(path)}: expected a file")
    size, data = path.stat().st_size, b""
    if size <= cap:
        with open(path, "rb") as f:
            data = f.read(cap + 1)  # a file that grew since the stat is still read no further than the cap
        size = max(size, len(data))
    if size > cap:
        raise error(f"{label} is {size:,} bytes: expected at most {_cap_text(cap)}, this file's size limit")
    return data


def decode_utf8(data: bytes, label: str, error: type[UserError] = UserError) -> str:
    """`data` as text, or a one-line error naming the first byte that is not UTF-8 and where it is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{label} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start:,}): expected a "
                    "UTF-8 encoded file (convert it, e.g. `iconv -f latin1 -t utf-8`)") from None


def read_text_capped(path: str | os.PathLike, cap: int, what: str, error: type[UserError] = UserError) -> str:
    """A UTF-8 text file of at most `cap` bytes."""
    return decode_utf8(read_capped(path, cap, what, error), f"{what} {str(path)!r}", error)


def nesting_depth(obj: object, limit: int) -> int:
    """How deeply `obj`'s lists and dicts nest, counted without recursion and no further than `limit` + 1 levels.

    Each container is visited once (by id), so a structure that shares one list many times over (a pickle's
    memo, a YAML alias) costs its distinct containers, not the paths through them."""
    deepest, seen, stack = 0, set(), [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict | list | tuple) or id(node) in seen:
            continue
        seen.add(id(node))
        deepest = max(deepest, depth)
        if depth > limit:
            break
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_json(text: str, label: str, error: type[UserError] = UserError, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """json.loads with one-line errors, and no more than `max_depth` levels of nesting."""
    import json

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{label} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): expected a JSON "
                    "document") from None
    except (ValueError, RecursionError) as e:  # a number of over 4300 digits; nesting past the interpreter's limit
        what = "nests too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise error(f"{label} is not usable JSON ({what}): expected at most {max_depth} levels of nesting and "
                    "plain numbers") from None
    if nesting_depth(obj, max_depth) > max_depth:
        raise error(f"{label} nests deeper than {max_depth} levels: expected metadata of a few levels")
    return obj


def load_json_capped(path: str | os.PathLike, cap: int, what: str, error: type[UserError] = UserError) -> Any:
    """A JSON file of at most `cap` bytes and JSON_MAX_DEPTH levels, parsed."""
    return parse_json(read_text_capped(path, cap, what, error), f"{what} {str(path)!r}", error)


def check_config_files(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse the config files that Snakemake would not read as plain data, before it reads them.

    A YTE template (`__use_yte__: true`) makes Snakemake evaluate Python expressions from the file; a file over
    CONFIG_MAX_BYTES, nesting deeper than JSON_MAX_DEPTH or whose YAML aliases expand past CONFIG_MAX_NODES
    would make its loaders walk for minutes. Files that do not exist are left to Snakemake's own message.
    """
    for path in paths:
        if Path(path).exists():
            _check_config_file(Path(path))


def _check_config_file(path: Path) -> None:
    label = f"config file {str(path)!r}"
    text = read_text_capped(path, CONFIG_MAX_BYTES, "config file", ConfigError)
    refusal = (f"{label} contains {YTE_KEY!r}, refused: Snakemake would evaluate its Python expressions (YTE "
               "templating); expected plain YAML or JSON settings, nothing to run")
    if YTE_KEY in text:
        raise ConfigError(refusal)
    nodes, depth = _yaml_shape(text, refusal, label)
    if depth > JSON_MAX_DEPTH:
        raise ConfigError(f"{label} nests deeper than {JSON_MAX_DEPTH} levels: expected a config of a few levels")
    if nodes > CONFIG_MAX_NODES:
        raise ConfigError(f"{label} expands to over {CONFIG_MAX_NODES:,} YAML nodes through its aliases (*name): "
                          f"expected a config that does not grow past that limit when its aliases are expanded")


def _yaml_shape(text: str, yte_refusal: str, label: str = "config file") -> tuple[int, int]:
    """(nodes once aliases are expanded, deepest nesting) of a YAML text, from its parser events alone: nothing
    is built, so this is linear in the text however its aliases multiply. Stops early past either limit.

    On the way, keys that cannot mean what was written are refused with their line: a key given twice in one
    mapping (PyYAML keeps the last one silently), and a plain key YAML reads as a boolean or null (`on:`, `no:`,
    `null:`)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    anchored: dict[str, int] = {}
    open_nodes: list[list] = [[None, 0]]  # [anchor, nodes so far] of each collection being read
    mappings: list[dict | None] = [None]  # per open collection: a mapping's keys so far (None: a sequence)
    expecting_key: list[bool] = [False]  # per open collection: whether its next node is a mapping key
    deepest = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.NodeEvent) and expecting_key[-1]:
                _check_key(event, mappings[-1], label)
            if isinstance(event, yaml.NodeEvent) and mappings[-1] is not None:
                expecting_key[-1] = not expecting_key[-1]
            if isinstance(event, yaml.CollectionStartEvent):
                open_nodes.append([event.anchor, 1])
                is_mapping = isinstance(event, yaml.MappingStartEvent)
                mappings.append({} if is_mapping else None)
                expecting_key.append(is_mapping)
                deepest = max(deepest, len(open_nodes) - 1)
                if deepest > JSON_MAX_DEPTH:
                    return 0, deepest
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, count = open_nodes.pop()
                mappings.pop()
                expecting_key.pop()
            elif isinstance(event, yaml.ScalarEvent):
                if event.value == YTE_KEY:  # a key spelled with escapes ("\x5f_use_yte__") is the same key
                    raise ConfigError(yte_refusal)
                anchor, count = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                anchor, count = None, anchored.get(event.anchor, 1)
            else:
                continue
            if anchor is not None:
                anchored[anchor] = count
            open_nodes[-1][1] += count
            if open_nodes[-1][1] > CONFIG_MAX_NODES:
                return open_nodes[-1][1], deepest
    except yaml.YAMLError as e:
        if "nesting depth" in str(e):  # libyaml's own limit (1000 levels), met before ours can count them
            return 0, JSON_MAX_DEPTH + 1
        raise ConfigError(yaml_error_line(e, label)) from None
    return open_nodes[0][1], deepest


# Plain (unquoted) scalars YAML 1.1 reads as booleans or null: as keys they cannot mean the word written.
_NOT_TEXT_KEYS = {"yes", "no", "on", "off", "true", "false", "null", "~", ""}


def _check_key(event: Any, keys: dict, label: str) -> None:
    """One mapping key of a YAML text, as a parser event: refused if it repeats an earlier key of the same
    mapping, or is a plain word YAML reads as a boolean or null."""
    import yaml

    line = event.start_mark.line + 1
    if not isinstance(event, yaml.ScalarEvent):
        return  # an alias or collection as a key: the loaders refuse those themselves
    plain = event.implicit[0]  # unquoted and untagged: YAML resolves its type from the text
    if plain and event.value.lower() in _NOT_TEXT_KEYS:
        raise ConfigError(f"{label}, line {line}: key {event.value!r} reads as a YAML boolean or null, not as the "
                          f"word: expected a name (quote it, \"{event.value}\", if the word is meant)")
    if event.value in keys:
        raise ConfigError(f"{label}, line {line}: key {event.value!r} is given twice in one mapping (first at line "
                          f"{keys[event.value]}): expected each key once (YAML would keep only the last)")
    keys[event.value] = line


def yaml_error_line(error: Exception, label: str) -> str:
    """One line for a PyYAML parse error: where (line, column) and what the parser met."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{label} is malformed YAML{where} ({problem}): expected YAML or JSON settings"

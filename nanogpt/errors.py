"""The errors a user can fix. Only these become a one-line message (exit status 2); anything else is a bug and
keeps its traceback."""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the input, named with its value and what was expected."""

    def __str__(self) -> str:
        # One line wherever it is shown (the CLI, Snakemake's report of a Snakefile error), even when a value
        # quoted in it holds a line break: a key or name read from a file can.
        # Only line breaks go: the spaces of a quoted value ('  ') stay as they are.
        return " ".join(super().__str__().splitlines())


class ConfigError(UserError):
    """A bad setting in config.yaml or on the command line."""


class DataError(UserError):
    """Prepared data (train.bin / val.bin / meta.json) that does not match what its metadata promises."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit."""


class ChecksumError(UserError):
    """A file whose sha256 differs from the expected one."""


class DiskFullError(UserError):
    """A write that failed because its filesystem is full."""


class BusyError(UserError):
    """A run folder another live process is training in."""

"""`python -m nanogpt.launch ARGS`: torchrun with the same arguments, ending with the worker's one-line error.

Plain torchrun ends a failed run with a 30-line ChildFailedError traceback of its own, after the error that
matters. Here the workers write their one-line user error to a file this process names ($NANOGPT_ERROR_FILE),
and a failed run ends with that line (exit status 2), or with one line naming the failed rank and its exit code
(a bug: the worker's traceback is above it in the log).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ERROR_FILE_ENV = "NANOGPT_ERROR_FILE"


def report_user_error(message: str) -> None:
    """Called by a worker: leave its one-line error for the launcher (no-op outside nanogpt.launch)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            Path(path).write_text(message + "\n")
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    fd, error_file = tempfile.mkstemp(prefix="nanogpt-error-", suffix=".txt")
    os.close(fd)
    os.environ[ERROR_FILE_ENV] = error_file
    try:
        run(args)
    except ChildFailedError as e:
        message = Path(error_file).read_text().strip()
        if message:
            print(message, file=sys.stderr)
            return 2
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code == 143 or code == -15:
            print("nanogpt train: stopped by SIGTERM after saving a checkpoint: rerun to resume", file=sys.stderr)
            return 143
        print(f"nanogpt train: error: worker rank {rank} exited with code {code}: see its traceback above",
              file=sys.stderr)
        return 1
    finally:
        Path(error_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

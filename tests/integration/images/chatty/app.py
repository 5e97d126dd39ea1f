"""Functions that write a line on stderr, then answer at once."""

import subprocess
import sys

from tarea.runtime import serve, task


@task
def said(n: int) -> int:
    """Write "said n" with print(), then answer n."""
    print(f"said {n}", file=sys.stderr)
    return n


@task
def said_by_a_child(n: int) -> int:
    """Have a child process write "said n" on the task's stderr, then answer n."""
    subprocess.run(["sh", "-c", f"echo said {n} >&2"], check=True)
    return n


@task
def failed(n: int) -> int:
    """Write "said n", then fail: the runtime logs the traceback before answering."""
    print(f"said {n}", file=sys.stderr)
    raise ValueError(f"failed {n}")


if __name__ == "__main__":
    serve()

"""``python -m tarea``: serve the API, as the seed's and today's scripts start it.

The ``tarea`` command (:mod:`tarea.cli`) is the command line; ``tarea serve``
and ``python -m tarea`` run the same server (:mod:`tarea.serve`).
"""

import sys

if __name__ == "__main__":
    try:
        from tarea.serve import main
    except ModuleNotFoundError as exc:  # a client-only install: say so, exit 3
        from tarea.cli.common import server_missing

        message = server_missing(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(3)
    main()

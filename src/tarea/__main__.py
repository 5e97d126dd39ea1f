"""``python -m tarea``: serve the API, as the seed's and today's scripts start it.

The ``tarea`` command (:mod:`tarea.cli`) is the command line; ``tarea serve``
and ``python -m tarea`` run the same server (:mod:`tarea.serve`).
"""

from tarea.serve import main

if __name__ == "__main__":
    main()

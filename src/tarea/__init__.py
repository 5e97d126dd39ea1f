"""tarea: run remote tasks in containers."""

__version__ = "0.1.0"

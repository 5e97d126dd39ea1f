"""{{name}}: the functions this image offers (tarea.runtime: docs/protocol.md).

Each ``@task`` function can be called by name; its parameters are checked
against the type hints, and ``rpc.discover`` describes it from its signature
and this docstring, so a call with bad params is refused before it runs.
"""

from tarea.runtime import TaskError, progress, serve, task


@task
def saludar(nombre: str, veces: int = 1) -> str:
    """Greet ``nombre``, ``veces`` times.

    Reports its progress after each greeting.
    """
    if veces < 1:
        raise TaskError("veces must be at least 1", {"param": "veces"})
    saludos = []
    for done in range(1, veces + 1):
        saludos.append(f"Hola, {nombre}")
        progress(done / veces, f"{done} of {veces}")
    return " ".join(saludos)


if __name__ == "__main__":
    serve()

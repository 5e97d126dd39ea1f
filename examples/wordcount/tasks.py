"""Word count over a text: a tarea task image, standard library only."""

from __future__ import annotations

import re
from collections import Counter

from tarea.runtime import TaskError, progress, serve, task

_WORD = re.compile(r"\w+(?:['’-]\w+)*")


@task
def contar_palabras(texto: str, top: int = 10, minusculas: bool = True) -> dict[str, object]:
    """Count the words of a text: in all, distinct, lines, and the most frequent.

    Words are runs of letters and digits (apostrophes and hyphens inside a word
    keep it whole); with ``minusculas`` they are counted case-insensitively.
    ``frecuentes`` lists the ``top`` most frequent as ``[word, count]``, the
    most frequent first (ties: the word seen first).
    """
    if top < 0:
        raise TaskError("top must be 0 or more", {"param": "top"})
    counts: Counter[str] = Counter()
    lines = texto.splitlines()
    step = max(1, len(lines) // 10)
    total = 0
    for number, line in enumerate(lines, 1):
        words = _WORD.findall(line.lower() if minusculas else line)
        counts.update(words)
        total += len(words)
        if number % step == 0:
            progress(number / len(lines), f"{number} of {len(lines)} lines")
    return {
        "palabras": total,
        "distintas": len(counts),
        "lineas": len(lines),
        "frecuentes": [[word, n] for word, n in counts.most_common(top)],
    }


if __name__ == "__main__":
    serve()

"""tarea's standard task image: the seed's operations, and a few more.

Served with tarea's JSON-RPC stdio protocol by default, or the seed's HTTP
contract on port 5000 with ``TAREA_RUNTIME_MODE=http`` (or ``--http``).
Integer inputs give integer results where the result is a whole number.
"""

from __future__ import annotations

import math
import time

from tarea.runtime import TaskError, progress, serve, task

Number = int | float

MAX_INT_BITS = 13_000
"""Larger integer results (about 3900 digits) are refused: JSON output stops at 4300."""


@task
def suma(**valores: float) -> Number:
    """The sum of all the values (0 when there are none)."""
    return _checked(sum(valores.values()))


@task
def multiplicacion(**valores: float) -> Number:
    """The product of all the values (1 when there are none)."""
    result: Number = 1
    for value in valores.values():
        result = _checked(result * value)
    return result


@task
def promedio(**valores: float) -> Number:
    """The mean of the values (0 when there are none)."""
    if not valores:
        return 0
    total = sum(valores.values())
    count = len(valores)
    if isinstance(total, int) and total % count == 0:
        return total // count
    return _checked(total / count)


@task
def resta(a: float, b: float) -> Number:
    """``a - b``."""
    return _checked(a - b)


@task
def division(a: float, b: float) -> Number:
    """``a / b``; an exact division of integers gives an integer."""
    if b == 0:
        raise TaskError("division by zero: 'b' must not be 0", {"param": "b"})
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    try:
        return _checked(a / b)
    except OverflowError as exc:
        raise TaskError("the result is too large") from exc


@task
def potencia(base: float, exponente: float) -> Number:
    """``base`` raised to ``exponente``."""
    # Refuse a huge integer power before computing it: it has ~exponente * log2(base) bits.
    if (
        isinstance(base, int)
        and isinstance(exponente, int)
        and exponente * (abs(base).bit_length() - 1) > MAX_INT_BITS
    ):
        raise TaskError("the result is too large")
    try:
        result = base**exponente
    except ZeroDivisionError as exc:
        raise TaskError("0 cannot be raised to a negative power") from exc
    except OverflowError as exc:
        raise TaskError("the result is too large") from exc
    if isinstance(result, complex):
        raise TaskError("the result is not a real number")
    return _checked(result)


@task
def esperar(segundos: float) -> Number:
    """Sleep ``segundos`` seconds, reporting progress about once a second; return them."""
    if segundos < 0:
        raise TaskError("'segundos' must not be negative")
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < segundos:
        time.sleep(min(1.0, segundos - elapsed))
        done = min(segundos, time.monotonic() - start)
        progress(done / segundos, f"{done:.1f} of {segundos:g} s")
    return segundos


def _checked(value: Number) -> Number:
    """``value``, unless JSON cannot carry it: infinite, or an integer too long."""
    too_large = (
        not math.isfinite(value)
        if isinstance(value, float)
        else abs(value).bit_length() > MAX_INT_BITS
    )
    if too_large:
        raise TaskError("the result is too large")
    return value


if __name__ == "__main__":
    serve()

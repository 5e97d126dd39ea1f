"""``make bench``: tarea measured against its floor, ``docker run`` and the seed's way.

One run on one machine, printed as a table and written to ``docs/benchmarks.md``.
Run it with ``make bench`` (or ``python -m bench`` from the repository root);
``BENCH_QUICK=1`` gives a short run for development. See :mod:`bench.main`.
"""

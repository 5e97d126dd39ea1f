"""``python -m bench``: run the benchmark (see :mod:`bench.main`)."""

from bench.main import main

raise SystemExit(main())

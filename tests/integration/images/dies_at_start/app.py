"""Dies while starting: a line of its own, then an uncaught exception (exit code 1)."""

import sys

sys.stderr.write("dies_at_start: loading the model...\n")
raise RuntimeError("dies_at_start: the model file is missing (on purpose)")

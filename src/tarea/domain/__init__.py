"""Pure domain objects: no I/O, no third-party services."""

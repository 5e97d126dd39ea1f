"""Everything that touches containers: images, sandbox, protocols, execution."""

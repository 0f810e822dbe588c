"""Benchmarks of decision quality and scale; not shipped in the wheel."""

"""Byte-level tests of the pure wire formats in `protocol/`."""

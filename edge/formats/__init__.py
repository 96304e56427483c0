"""Formats: pure functions that turn stored entries into upstream payloads (no I/O)."""

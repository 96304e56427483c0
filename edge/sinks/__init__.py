"""Sinks: deliver formatted records upstream and report what was acknowledged."""

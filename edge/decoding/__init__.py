"""Payload decoding: turning uplink bytes into readings from the shared vocabulary."""

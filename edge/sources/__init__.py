"""Sources: where uplinks come from (ChirpStack's MQTT integration)."""

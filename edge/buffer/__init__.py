"""The durable SQLite store-and-forward buffer."""

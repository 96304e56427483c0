"""The durable SQLite store-and-forward buffer.

`Buffer` (store.py) is one connection composed of one class per role: writer.py appends,
sizing.py keeps the size bound, cursors.py moves each upstream through it, inspector.py reads
for people (and `Inspector` is the read-only look on its own), dead_letters.py, thinning.py and
commands.py keep what their names say. registry.py caches ChirpStack's devices in the same file,
health.py sensor health; migrations.py holds the schema's history. adapters.py lends the sinks
their backlog, policy.py decides what a full disk or an unstorable record costs, and codec_index.py
is the codec catalogues' own index file beside the buffer. Modules in this package import
each other directly, never this package's names, so importing any of them cannot run in a circle.
"""

from edge.buffer.cursors import Gap, Rewind
from edge.buffer.dead_letters import DEAD_LETTER_SHARE
from edge.buffer.inspector import Inspector, Stored
from edge.buffer.sizing import is_disk_full
from edge.buffer.store import Buffer, open_writer
from edge.buffer.writer import COUNTERS, MALFORMED_SHARE, Batch, NewUplink

__all__ = [
    "COUNTERS",
    "DEAD_LETTER_SHARE",
    "MALFORMED_SHARE",
    "Batch",
    "Buffer",
    "Gap",
    "Inspector",
    "NewUplink",
    "Rewind",
    "Stored",
    "is_disk_full",
    "open_writer",
]

"""The status server (metrics, health, JSON API and page) as the service starts it; see edge.web.server."""

from edge.net import is_loopback
from edge.web.server import DEFAULT_PORT, WebServer

__all__ = ["DEFAULT_PORT", "WebServer", "is_loopback"]

"""Whether a network address answers, asked once before a library that
retries for minutes is (tfds' downloads, the Hugging Face Hub), so that a
machine without the network gets its one-line error in seconds."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request
from typing import Optional

from ddpm_jax import paths

# How long a host (or the proxy to it) has to accept a connection.
TIMEOUT_S = 10.0


def unreachable(url: str, timeout_s: float = TIMEOUT_S) -> Optional[str]:
  """Why ``url``'s host does not accept a TCP connection within
  ``timeout_s`` (one try), or None if it does. Where the environment sets
  a proxy for the URL (HTTPS_PROXY ..., not bypassed by NO_PROXY) the
  proxy is the host tried. Schemes other than http(s) pass (None)."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    return None
  host = parts.hostname
  port = parts.port or (443 if parts.scheme == "https" else 80)
  via = ""
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(host):
    p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if p.hostname:
      host, port = p.hostname, p.port or 80
      via = f" through the proxy {host}:{port}"
  try:
    socket.create_connection((host, port), timeout=timeout_s).close()
  except OSError as e:
    return f"{paths.cause(e)}{via}"
  return None

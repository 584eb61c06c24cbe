"""ddpm_jax/reachability.py: one TCP connection, to the host or to the
proxy the environment names for it."""

import socket

from ddpm_jax import reachability


def _closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_listening_host_answers_and_a_closed_port_does_not(monkeypatch):
  for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
               "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
    monkeypatch.delenv(name, raising=False)
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert reachability.unreachable(f"http://127.0.0.1:{port}/x") is None
    closed = _closed_port()
    why = reachability.unreachable(f"http://127.0.0.1:{closed}/x")
    assert why is not None and "refused" in why.lower(), why
    # Through a proxy: the proxy is what must answer ...
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed}")
    why = reachability.unreachable(f"http://127.0.0.1:{port}/x")
    assert why is not None and why.endswith(
        f"through the proxy 127.0.0.1:{closed}"), why
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    assert reachability.unreachable("http://10.255.255.1:9/x",
                                    timeout_s=5) is None
    # ... unless NO_PROXY exempts the host.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert reachability.unreachable(f"http://127.0.0.1:{port}/x") is None
  assert reachability.unreachable("ftp://example.invalid/x") is None

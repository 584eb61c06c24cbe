"""A small Hugging Face Hub for the tests: repositories served over HTTP
the way huggingface_hub's single-file downloads read them (``HEAD`` then
``GET`` of ``/{repo}/resolve/{revision}/{file}``, the commit and ETag in
the headers, the Hub's error codes on a 404), so that a model given by its
repo id is fetched with ``HF_ENDPOINT`` pointed here, without the
internet."""

import contextlib
import hashlib
import http.server
import threading
from typing import Dict
from urllib.parse import unquote


class Repo:
  """One repository: {revision name or commit: (commit, {file: bytes})}."""

  def __init__(self):
    self.revisions: Dict[str, tuple] = {}
    self.requests = 0

  def add(self, files: Dict[str, bytes], names=("main",)) -> str:
    """A commit holding ``files``, reachable by its hash and ``names``
    (branches or tags); returns its 40-hex hash."""
    commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    for name in (commit, *names):
      self.revisions[name] = (commit, dict(files))
    return commit


def _handler(repos: Dict[str, Repo]):

  class Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args):  # quiet
      pass

    def _answer(self, body: bool):
      parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
      # {org}/{name}/resolve/{revision}/{file...}
      if len(parts) < 5 or parts[2] != "resolve":
        return self._error(404, "RepoNotFound")
      repo = repos.get(f"{parts[0]}/{parts[1]}")
      if repo is None:
        return self._error(404, "RepoNotFound")
      repo.requests += 1
      if parts[3] not in repo.revisions:
        return self._error(404, "RevisionNotFound")
      commit, files = repo.revisions[parts[3]]
      data = files.get("/".join(parts[4:]))
      if data is None:
        return self._error(404, "EntryNotFound", commit)
      self.send_response(200)
      self.send_header("X-Repo-Commit", commit)
      self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
      self.send_header("Content-Length", str(len(data)))
      self.send_header("Content-Type", "application/octet-stream")
      self.end_headers()
      if body:
        self.wfile.write(data)

    def _error(self, status: int, code: str, commit: str = ""):
      self.send_response(status)
      self.send_header("X-Error-Code", code)
      if commit:
        self.send_header("X-Repo-Commit", commit)
      self.send_header("Content-Length", "0")
      self.end_headers()

    def do_HEAD(self):  # pylint: disable=invalid-name
      self._answer(body=False)

    def do_GET(self):  # pylint: disable=invalid-name
      self._answer(body=True)

  return Handler


@contextlib.contextmanager
def serve(repos: Dict[str, Repo]):
  """Serves ``repos`` ({'org/name': Repo}) on a free local port; yields the
  endpoint URL."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                           _handler(repos))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()

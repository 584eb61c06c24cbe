"""The one layer through which the project reads and writes files: local
paths and URLs (``gs://bucket/...`` and any other scheme ``etils.epath``
knows) alike, as Orbax and tfds take them.

Paths stay strings. A local path is made absolute and written atomically
(a temporary file renamed into place); a URL is never turned into a local
path, and an object store writes each file as one object, which is atomic
there too.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from typing import Any, Dict, List

import fsspec
import numpy as np
from etils import epath

from ddpm_jax.storage_error import StorageError

# Several processes (the hosts of a pod, a restarted run) share a bucket:
# a folder listing must be read afresh each time, not from gcsfs's cache.
for _protocol in ("gs", "gcs"):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault(
      "use_listings_cache", False)


def storage_error(what: str, e: BaseException) -> StorageError:
  """A :class:`StorageError` reading "``what`` (cause)", with the errno of
  ``e`` where it has one."""
  if isinstance(e, StorageError):
    return e
  error = StorageError(f"{what} ({cause(e)})")
  error.errno = getattr(e, "errno", None)
  return error


def cause(e: BaseException) -> str:
  """The cause of a storage error in a few words: ``No space left on
  device (errno 28)`` for an OSError, else its type and first line."""
  if isinstance(e, StorageError):
    return str(e)
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror} (errno {e.errno})"
  text = (str(e).strip().splitlines() or [""])[0][:200]
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def is_url(path: Any) -> bool:
  """Whether ``path`` names a location by URL (``scheme://...``)."""
  return "://" in str(path)


def absolute(path: Any) -> str:
  """A local path made absolute; a URL as given."""
  path = str(path)
  return path if is_url(path) else os.path.abspath(path)


def join(base: Any, *parts: str) -> str:
  """``base`` / ``parts``, for a local path or a URL."""
  if is_url(base):
    return str(epath.Path(str(base)).joinpath(*parts))
  return os.path.join(str(base), *parts)


def dirname(path: Any) -> str:
  """The folder holding ``path``."""
  path = str(path).rstrip("/")
  return str(epath.Path(path).parent) if is_url(path) else \
      os.path.dirname(path)


def basename(path: Any) -> str:
  """The last component of ``path`` (ignoring a trailing slash)."""
  return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: Any) -> bool:
  """Whether a file or folder exists at ``path``."""
  return epath.Path(str(path)).exists() if is_url(path) else \
      os.path.exists(path)


def isdir(path: Any) -> bool:
  """Whether ``path`` is a folder (for a URL: a prefix holding objects)."""
  return epath.Path(str(path)).is_dir() if is_url(path) else \
      os.path.isdir(path)


def isfile(path: Any) -> bool:
  """Whether ``path`` is a file."""
  return epath.Path(str(path)).is_file() if is_url(path) else \
      os.path.isfile(path)


def makedirs(path: Any) -> None:
  """Creates the folder ``path`` and its parents, if missing (at a URL
  nothing: an object store has no folders, and a missing bucket is an
  error for :func:`check_reachable`, never created here)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: Any) -> List[str]:
  """The names in folder ``path``."""
  if is_url(path):
    return sorted(p.name for p in epath.Path(str(path)).iterdir())
  return sorted(os.listdir(path))


def bucket(url: Any) -> str:
  """The ``scheme://bucket`` a URL lies in."""
  scheme, rest = str(url).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def check_reachable(path: Any, timeout_s: float = 30.0) -> None:
  """For a URL: raises a one-line error unless its bucket exists and
  answers within ``timeout_s`` (a wrong name, missing credentials or an
  unreachable endpoint would otherwise surface late, or retry for
  minutes). Local paths pass."""
  if not is_url(path):
    return
  root = bucket(path)
  _check_emulator_listens(root)
  _check_gcs_client_setup(root)
  result = {}

  def probe():
    try:
      result["exists"] = epath.Path(root).exists()
    except Exception as e:  # pylint: disable=broad-except
      result["error"] = e

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise ConnectionError(
        f"{root} did not answer within {timeout_s:.0f} s: check the network "
        f"and the storage endpoint (for an emulator, STORAGE_EMULATOR_HOST)")
  if "error" in result:
    e = result["error"]
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConnectionError(
        f"cannot reach {root} ({type(e).__name__}: {reason[:200]}): check "
        f"the credentials (gcloud auth application-default login) and the "
        f"bucket name")
  if not result["exists"]:
    raise FileNotFoundError(
        f"bucket {root} does not exist or is not visible with these "
        f"credentials: create it (gcloud storage buckets create {root}) or "
        f"give another URL")


def _check_emulator_listens(root: str) -> None:
  """For a gs:// URL with STORAGE_EMULATOR_HOST set: a one-line error at
  once if nothing accepts a connection there (gcsfs would retry a refused
  connection for half a minute)."""
  endpoint = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if not root.startswith(("gs://", "gcs://")) or not endpoint:
    return
  url = urllib.parse.urlsplit(
      endpoint if "://" in endpoint else f"http://{endpoint}")
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=10).close()
  except OSError as e:
    raise ConnectionError(
        f"cannot reach {root}: nothing answers at {endpoint} "
        f"(STORAGE_EMULATOR_HOST; {type(e).__name__}): start the storage "
        f"emulator there, or unset STORAGE_EMULATOR_HOST for real GCS"
    ) from None


# Where the GCS clients send their requests when no emulator is set.
GCS_HOST = "storage.googleapis.com"


def _check_gcs_client_setup(root: str) -> None:
  """For a gs:// URL on real GCS (no STORAGE_EMULATOR_HOST): a one-line
  error at once, not after the clients' half-minute of retries, when
  GOOGLE_APPLICATION_CREDENTIALS names a file that does not exist, or when
  the storage host's name does not resolve (no network; skipped behind a
  proxy, which resolves names itself, and where the clients are given
  another endpoint)."""
  if (not root.startswith(("gs://", "gcs://"))
      or os.environ.get("STORAGE_EMULATOR_HOST")):
    return
  key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
  if key and not os.path.isfile(key):
    raise ConnectionError(
        f"cannot reach {root}: GOOGLE_APPLICATION_CREDENTIALS names {key}, "
        f"which is not a file: point it at a service account's key file, or "
        f"unset it to use gcloud's (gcloud auth application-default login)")
  if (urllib.request.getproxies().get("https")
      and not urllib.request.proxy_bypass(GCS_HOST)):
    return
  endpoints = [fsspec.config.conf.get(protocol, {}).get("endpoint_url")
               for protocol in ("gs", "gcs")]
  if os.environ.get("TENSORSTORE_GCS_HTTP_URL") or any(endpoints):
    return
  try:
    socket.getaddrinfo(GCS_HOST, 443)
  except socket.gaierror as e:
    if e.errno != socket.EAI_NONAME:
      return  # a transient failure: the clients retry it, within the deadline
    raise ConnectionError(
        f"cannot reach {root}: the storage host {GCS_HOST} does not resolve "
        f"({e.strerror}): check the network (for an emulator, set "
        f"STORAGE_EMULATOR_HOST)") from None


def check_writable_folder(path: Any, flag: str) -> None:
  """Raises :class:`StorageError` (one line naming the path and ``flag``)
  unless local folder ``path`` exists or could be made, and files can be
  written there: for an entry point to refuse before it loads a model or
  draws a sample. Writes and removes a probe file in ``path``, or in its
  nearest existing parent; creates nothing. A URL is left to
  :func:`check_reachable`."""
  if is_url(path):
    return
  folder = os.path.abspath(str(path))
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise StorageError(f"{existing} is a file, not a folder: give {flag} a "
                       f"path under a folder")
  try:
    probe = os.path.join(existing, f".write-check-{uuid.uuid4().hex[:8]}")
    try:
      with open(probe, "wb") as f:
        f.write(b"x")  # a full disk may still take an empty file
    finally:
      if os.path.exists(probe):
        os.remove(probe)
  except OSError as e:
    raise storage_error(f"cannot write in {existing}: give {flag} a "
                        f"writable folder", e) from e


def walk_files(path: Any) -> List[str]:
  """Every file under folder ``path``, recursively, sorted."""
  if not is_url(path):
    return sorted(os.path.join(root, f) for root, _, names in os.walk(path)
                  for f in names)
  found, folders = [], [epath.Path(str(path))]
  while folders:
    for p in folders.pop().iterdir():
      (folders if p.is_dir() else found).append(p)
  return sorted(str(p) for p in found)


def read_bytes(path: Any) -> bytes:
  """The bytes of file ``path``."""
  if is_url(path):
    return epath.Path(str(path)).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def open_read(path: Any):
  """A seekable binary file object reading ``path``; use it in ``with``."""
  if is_url(path):
    return epath.Path(str(path)).open("rb")
  return open(path, "rb")  # pylint: disable=consider-using-with


def read_text(path: Any) -> str:
  """The text of file ``path`` (UTF-8)."""
  return read_bytes(path).decode("utf-8")


def write_bytes(path: Any, data: bytes) -> None:
  """Writes ``data`` to ``path``, creating its folder; atomically (a reader
  sees the old file or the new one, never part of it). A failure raises
  :class:`StorageError` naming ``path`` and the cause."""
  try:
    _write_bytes(path, data)
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(f"could not write {path}", e) from e


def _write_bytes(path: Any, data: bytes) -> None:
  folder = dirname(path)
  if folder:
    makedirs(folder)
  if is_url(path):
    epath.Path(str(path)).write_bytes(data)
    return
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # on disk before it replaces the old file
    os.replace(tmp, path)
  except BaseException:
    # A failed write (a full disk, a file-size limit) leaves the old file
    # as it was and no partial one beside it.
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: Any, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path``, atomically."""
  write_bytes(path, text.encode("utf-8"))


def save_npz(path: Any, compress: bool = True, **arrays: Any) -> None:
  """An ``.npz`` of ``arrays`` (``np.savez_compressed``, or ``np.savez``
  without ``compress``) at ``path``, atomically."""
  buf = io.BytesIO()
  (np.savez_compressed if compress else np.savez)(buf, **arrays)
  write_bytes(path, buf.getvalue())


def save_cache_npz(path: Any, what: str, **arrays: Any) -> bool:
  """:func:`save_npz` (uncompressed) for a cache entry: a cache that cannot
  be written (a read-only or full folder, a path under a file) is a
  one-line warning naming ``what`` and the path, not an error, so that a
  result already computed is not lost. Whether it was written."""
  try:
    save_npz(path, compress=False, **arrays)
    return True
  except OSError as e:
    print(f"warning: {what} not cached at {path} ({cause(e)}); it will be "
          f"computed again next time (set DDPM_JAX_CACHE to a writable "
          f"folder)", file=sys.stderr)
    return False


def load_npz(path: Any) -> Dict[str, np.ndarray]:
  """The arrays of an ``.npz`` file (read without unpickling)."""
  with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def remove(path: Any) -> None:
  """Deletes file ``path`` (FileNotFoundError if there is none). For the
  project's own bookkeeping files (a workdir's lock), never an output."""
  if is_url(path):
    p = epath.Path(str(path))
    if not p.exists():
      raise FileNotFoundError(str(path))
    p.unlink()
    return
  os.remove(path)


def move(src: Any, dst: Any) -> None:
  """Moves file or folder ``src`` to ``dst`` (which must not exist). At a
  URL each object is copied, then the originals are deleted, so a crash
  midway loses nothing."""
  if not (is_url(src) or is_url(dst)):
    shutil.move(src, dst)
    return
  if not isdir(src):
    epath.Path(str(src)).copy(epath.Path(str(dst)))
    epath.Path(str(src)).unlink()
    return
  base = str(src).rstrip("/")
  for f in walk_files(base):
    epath.Path(f).copy(epath.Path(join(dst, f[len(base) + 1:])))
  rmtree(base)


def rmtree(path: Any) -> None:
  """Deletes folder ``path`` and everything in it."""
  if is_url(path):
    epath.Path(str(path)).rmtree()
  else:
    shutil.rmtree(path)

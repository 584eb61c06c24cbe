"""The error of a failed read or write at a storage location, importable
without the storage libraries (the entry points' one-line errors name it
before anything else is loaded)."""


class StorageError(OSError):
  """A read or write at a storage location failed (a full disk, a denied
  permission, an unreachable bucket): its message is one line naming the
  path and the cause."""

"""Models by Hugging Face Hub repo id (``--model google/ddpm-cifar10-32``):
the files a diffusers UNet2DModel needs, fetched with huggingface_hub into
its usual cache (``HF_HOME``; ``HF_ENDPOINT`` for another server;
``HF_HUB_OFFLINE=1``: the cache only), then read as a local diffusers
folder. A path that exists locally, or a URL, is never taken for a repo
id."""

from __future__ import annotations

import logging
import os
from typing import Optional

from ddpm_jax import paths
from ddpm_jax import reachability
from ddpm_jax.interop import ConversionError
from ddpm_jax.interop.diffusers_config import CONFIG_NAME
from ddpm_jax.interop.diffusers_scheduler import SCHEDULER_CONFIG_NAME
from ddpm_jax.interop.diffusers_unet import PICKLE_WEIGHTS_NAME, WEIGHTS_NAME

# 'org/name', as the Hub names repositories.
def _by_hand(repo_id: str) -> str:
  return (f"download it on a machine that reaches the Hub (`hf download "
          f"{repo_id} --local-dir DIR`, or git clone) and pass --model DIR")


def fetch(repo_id: str, revision: Optional[str] = None) -> str:
  """The local folder (a snapshot in the Hub cache) holding ``repo_id``'s
  UNet config and weights (safetensors, else the pickled .bin, which is
  read with ``weights_only``) at ``revision`` (default the main branch),
  at its top level or in ``unet/``, and its scheduler config if it has one.
  Raises :class:`ConversionError` with one line naming the repo and what
  to do."""
  # pylint: disable=g-import-not-at-top
  from huggingface_hub import constants, hf_hub_download
  from huggingface_hub import errors as hub_errors

  # Asked once, before huggingface_hub would retry a refused connection for
  # about 23 s: unreachable, the cache alone answers.
  cut_off = (None if constants.HF_HUB_OFFLINE else
             reachability.unreachable(constants.ENDPOINT))

  def get(name: str) -> Optional[str]:
    try:
      return hf_hub_download(repo_id, name, revision=revision,
                             local_files_only=cut_off is not None)
    except hub_errors.LocalEntryNotFoundError:
      raise  # (a subclass: not in the cache, and the Hub not reached)
    except hub_errors.EntryNotFoundError:
      return None

  # Its retries are warnings on the console; what failed is said once here.
  logger = logging.getLogger("huggingface_hub")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    config = get(CONFIG_NAME)
    prefix = ""
    if config is None:
      prefix, config = "unet/", get(f"unet/{CONFIG_NAME}")
    if config is None:
      raise ConversionError(
          f"Hub repo {repo_id} has no {CONFIG_NAME} (nor unet/{CONFIG_NAME}):"
          f" it is not a diffusers UNet2DModel or pipeline")
    if (get(prefix + WEIGHTS_NAME) is None and
        get(prefix + PICKLE_WEIGHTS_NAME) is None):
      raise ConversionError(
          f"Hub repo {repo_id} has no {prefix}{WEIGHTS_NAME} (nor "
          f"{PICKLE_WEIGHTS_NAME}): its weights are in another form")
    if get(SCHEDULER_CONFIG_NAME) is None:
      get(f"scheduler/{SCHEDULER_CONFIG_NAME}")
  except hub_errors.RevisionNotFoundError:
    raise ConversionError(f"--revision {revision} is not a branch, tag or "
                          f"commit of Hub repo {repo_id}") from None
  except hub_errors.RepositoryNotFoundError:
    raise ConversionError(
        f"no Hub repo {repo_id} at {constants.ENDPOINT} (a private or gated "
        f"one needs `hf auth login`); a local folder of that name does not "
        f"exist either") from None
  except hub_errors.LocalEntryNotFoundError as e:
    if constants.HF_HUB_OFFLINE:
      raise ConversionError(
          f"Hub repo {repo_id} is not in the Hugging Face cache "
          f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: run once "
          f"with the network, or {_by_hand(repo_id)}") from None
    raise ConversionError(
        f"could not reach the Hugging Face Hub at {constants.ENDPOINT} for "
        f"{repo_id} ({cut_off or _cause(e)}): {_by_hand(repo_id)}"
    ) from None
  except OSError as e:
    raise ConversionError(f"could not fetch Hub repo {repo_id} "
                          f"({paths.cause(e)}): {_by_hand(repo_id)}") from None
  finally:
    logger.setLevel(level)
  folder = os.path.dirname(config)
  return os.path.dirname(folder) if prefix else folder


def _cause(e: BaseException) -> str:
  """The innermost cause of ``e``, in a few words."""
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  text = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return text[:200]

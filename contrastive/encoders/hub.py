"""Whether the Hugging Face Hub can be reached, decided once per process and quickly.

Without network, transformers and datasets retry each request with back-off (half a minute or more, a dozen log
lines) before failing. Loaders ask `hub_offline_reason()` first: when it names a reason (HF_HUB_OFFLINE set, or
the hub's host does not answer within a few seconds) they load under `local_only()`, from the local cache, and
when that fails say in one line why nothing could be fetched.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import threading
from typing import Callable, TypeVar
from urllib.parse import urlparse

from ..errors import UserError

T = TypeVar("T")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")

PROBE_TIMEOUT_S = 3.0
FOLDER_REMEDY = "give a local folder instead (save_pretrained on a machine with network)"


def is_hub_id(spec: str) -> bool:
    """Whether `spec` has the form of a hub id (`name` or `owner/name`); a path such as /x/y or ./m does not."""
    return bool(_HUB_ID.fullmatch(spec))


def endpoint() -> str:
    """The hub's URL (HF_ENDPOINT when set)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_env() -> str | None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "on", "yes", "true"):
            return f"{var} is set"
    return None


@functools.lru_cache(maxsize=None)
def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the URL's host opens within `timeout` seconds, else why not."""
    parts = urlparse(url)
    host, port = parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)
    result: list[str | None] = []

    def connect() -> None:  # name resolution has no timeout of its own: run it where we need not wait for it
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(e.strerror or type(e).__name__)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer within {timeout:g} s"


def hub_offline_reason(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now ("HF_HUB_OFFLINE is set", "cannot reach https://huggingface.co (...)"), or
    None when it answers."""
    if reason := _offline_env():
        return reason
    if reason := probe(endpoint(), timeout):
        return f"cannot reach {endpoint()} ({reason})"
    return None


def offline_hint(reason: str, remedy: str = FOLDER_REMEDY) -> str:
    """The end of a one-line message about a hub id that is not in the local cache while the hub is unusable."""
    return f"it is not in the local cache and {reason}; {remedy}"


@contextlib.contextmanager
def local_only():
    """huggingface_hub and datasets in offline mode (as HF_HUB_OFFLINE=1 at start-up would set them): every request
    fails at once instead of being retried, and cached files are used."""
    import huggingface_hub.constants as hub_constants

    modules = [hub_constants]
    with contextlib.suppress(ImportError):
        import datasets.config

        modules.append(datasets.config)
    saved = [m.HF_HUB_OFFLINE for m in modules]
    for m in modules:
        m.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for m, value in zip(modules, saved):
            m.HF_HUB_OFFLINE = value


class HubUnavailable(UserError, OSError):
    """A hub id that is not in the local cache while the hub cannot be used (the message is one line)."""


def load_from_hub(load: Callable[[], T], name: str, remedy: str = FOLDER_REMEDY,
                  misses: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """`load()` of hub id `name` (a `from_pretrained` call): as is when the hub answers; else under `local_only()`,
    raising HubUnavailable with the reason when the cache does not hold it (`load` raised one of `misses`)."""
    reason = hub_offline_reason()
    if reason is None:
        return load()
    try:
        with local_only():
            return load()
    except misses:
        raise HubUnavailable(f"{name}: {offline_hint(reason, remedy)}") from None

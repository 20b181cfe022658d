"""Whether the Hugging Face hub can be reached, asked in a fraction of a second.

Without a network, `from_pretrained` and `load_dataset` retry for half a minute or more,
printing each retry, before they fail; a model spec or dataset that needs the hub is checked
here first, so the user gets one clear line at once.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the user put the Hugging Face libraries in offline mode (`HF_HUB_OFFLINE`)."""
    return _env_true("HF_HUB_OFFLINE")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None when it may be; a quick TCP probe.

    Skipped in offline mode (the datasets cache then answers) and behind a
    proxy (a direct connection says nothing there).
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        return None
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"cannot connect to {host}:{port}: {err}"
    return None

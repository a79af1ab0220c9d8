"""Whether the Hugging Face Hub can be asked at all, decided before asking it.

Offline, or with the Hub unreachable, the Hub clients (``huggingface_hub``, ``datasets``) retry
with back-off for half a minute, logging each retry, before they give up; a command that checks
first fails at once, in one line.
"""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (the Hub client reads it once, at import)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")
    if flag is not None:
        return flag.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` (name lookup included)."""
    import socket
    import threading
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # a name lookup takes no timeout of its own; the thread bounds it
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])

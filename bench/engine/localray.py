"""What a Ray cluster that bench starts on this machine needs around ``ray.init``.

* It listens on the loopback interface only. Ray binds its GCS server, raylet, object manager,
  agents and worker processes to the node's IP address, but turns ``127.0.0.1`` into the
  machine's network address unless Ray clusters are switched off for the process (the switch Ray
  uses on Windows and macOS); it is switched off while the cluster starts, so the node's address
  stays 127.0.0.1. The dashboard is not started.
* It has a folder of its own (Ray's temp dir: session logs, sockets, spilled objects) and a token
  of its own (token authentication, the token kept in this process's environment and the
  cluster's, never written to ``~/.ray``), so a token file left there by another cluster plays
  no part.
* A watchdog (``raywatch.py``) stops its processes and removes its folder when bench ends, even
  by SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WATCHDOG = Path(__file__).with_name("raywatch.py")
WATCHDOG_EXIT_S = 15.0  # the watchdog's grace period for leftover processes, with a margin


class LocalCluster:
    """The settings, folder and watchdog of one local cluster; :meth:`stop` after ``ray.shutdown``."""

    def __init__(self) -> None:
        # Ray's socket paths must stay under 108 bytes: the folder goes where Ray's own would.
        base = os.environ.get("RAY_TMPDIR") or "/tmp"
        self.folder = tempfile.mkdtemp(prefix="bench-ray-", dir=base)
        self._watchdog = subprocess.Popen(
            [sys.executable, str(WATCHDOG), str(os.getpid()), self.folder],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C at the terminal is for bench, which stops the cluster itself
        )
        self._token_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self._saved_env = {name: os.environ.get(name) for name in self._token_env}
        os.environ.update(self._token_env)
        reload_auth()

    def init_options(self) -> dict[str, Any]:
        return {"_temp_dir": self.folder, "_node_ip_address": "127.0.0.1", "include_dashboard": False}

    @contextlib.contextmanager
    def loopback(self):
        """While ``ray.init`` starts the cluster: keep the node's address 127.0.0.1."""
        from ray._private import ray_constants

        saved_flag, saved_env = (
            ray_constants.ENABLE_RAY_CLUSTER,
            os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR),
        )
        ray_constants.ENABLE_RAY_CLUSTER = False
        os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # for the processes Ray starts
        try:
            yield
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved_flag
            _restore(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, saved_env)

    def stop(self) -> None:
        """Let the watchdog end what is left of the cluster and remove its folder; wait for it."""
        with contextlib.suppress(Exception):
            if self._watchdog.stdin is not None:
                self._watchdog.stdin.close()
        try:
            self._watchdog.wait(timeout=WATCHDOG_EXIT_S)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()
        for name, value in self._saved_env.items():
            _restore(name, value)
        with contextlib.suppress(Exception):
            reload_auth()


def reload_auth() -> None:
    """Ray reads the auth mode and token once per process: read them again from the environment."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value

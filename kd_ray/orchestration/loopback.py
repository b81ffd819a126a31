"""Keep torch.distributed on the loopback interface in a private local cluster.

Ray's single-machine mode keeps Ray's own services on 127.0.0.1 (see
``kd_ray.orchestration.cluster._loopback_env``), and Ray Train then gives the workers
``MASTER_ADDR=127.0.0.1``. But two listeners of a DDP run are torch's, not Ray's:

- rank 0's TCPStore (the rendezvous store) binds every interface (``::``) whatever the master
  address; its only knob is a listening socket passed in (``master_listen_fd``), so
  :func:`setup_worker` makes rank 0 bind the master address itself;
- gloo binds the interface its host name resolves to; ``GLOO_SOCKET_IFNAME`` (set by
  :func:`loopback_env`) pins it to the loopback interface.

:func:`setup_worker` is the ``worker_process_setup_hook`` of every cluster a sweep runs on: it
runs in every Ray worker process and patches ``torch.distributed.rendezvous`` when (and only
if) torch is imported there, so workers that never use torch pay nothing. The patch acts only
when the master address is a loopback address (a cluster on 127.0.0.1, such as the private
one); then the store binds it and gloo is pinned to the loopback interface. On a multi-node
cluster torch is left as it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import ipaddress
import os
import socket
import sys
from types import ModuleType
from typing import Any

_RENDEZVOUS = "torch.distributed.rendezvous"


def _loopback_interface() -> str | None:
    """The name of this machine's loopback interface (``lo`` on Linux, ``lo0`` on macOS)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def loopback_env() -> dict[str, str]:
    """Environment for the processes of a private local cluster: gloo on loopback."""
    name = _loopback_interface()
    return {"GLOO_SOCKET_IFNAME": name} if name else {}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _patch(rendezvous: ModuleType) -> None:
    original = rendezvous._create_c10d_store
    if getattr(original, "_kd_ray_loopback", False):
        return

    def create_store(hostname, port, rank, world_size, timeout, use_libuv=True, *args: Any, **kwargs: Any):
        if not _is_loopback(hostname):
            return original(hostname, port, rank, world_size, timeout, use_libuv, *args, **kwargs)
        # Every rank: gloo's device is created after the store, from this variable.
        for key, value in loopback_env().items():
            os.environ.setdefault(key, value)
        if rank != 0 or args or kwargs or rendezvous._agent_store_serves(hostname, port):
            return original(hostname, port, rank, world_size, timeout, use_libuv, *args, **kwargs)
        family = socket.AF_INET6 if ":" in hostname else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((hostname.strip("[]"), port))
        listener.listen(socket.SOMAXCONN)
        return rendezvous.TCPStore(
            host_name=hostname,
            port=port,
            world_size=world_size,
            is_master=True,
            timeout=timeout,
            multi_tenant=True,
            master_listen_fd=listener.detach(),  # the store owns the socket from here on
            use_libuv=use_libuv,
        )

    create_store._kd_ray_loopback = True  # type: ignore[attr-defined]
    rendezvous._create_c10d_store = create_store


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ``torch.distributed.rendezvous`` right after it is first imported."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _RENDEZVOUS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def setup_worker() -> None:
    """Ray ``worker_process_setup_hook`` of a private local cluster (see the module doc)."""
    if _RENDEZVOUS in sys.modules:
        _patch(sys.modules[_RENDEZVOUS])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())

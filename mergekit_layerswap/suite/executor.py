"""Where a suite's tasks run: `local` (in this process, one after another: the default) or
`ray` (every merge and evaluation a Ray task, in parallel over a Ray cluster).

This module holds only the settings (the suite file's `executor:` section, which the
command's `--executor`/`--address` override) and the check that Ray is installed;
`suite.ray_run` runs the graph.
"""

from __future__ import annotations

import socket
from types import ModuleType
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from mergekit_layerswap.errors import InputError

#: What the `ray` extra of pyproject.toml installs (`client`: ray://HOST:PORT addresses).
INSTALL_HINT = "pip install 'ray[client]>=2.9'"
#: CPUs or GPUs per task: finite (Ray overflows on `.inf`) and not negative.
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ExecutorSettings(BaseModel):
    """The suite file's `executor:` section.

    `address`: None starts a Ray cluster on this machine; `auto` joins the one `ray start`
    runs here; `HOST:PORT` or `ray://HOST:10001` joins a remote one. `gpus_per_eval: None`
    means 1 when the cluster has a GPU, else 0. `max_retries`: how often a task whose worker
    died is run again.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    gpus_per_merge: Amount = 0
    gpus_per_eval: Amount | None = None
    cpus_per_task: Amount = 1
    max_retries: NonNegativeInt = 3
    #: seconds per node to answer (finite: Ray's wait overflows on `.inf`)
    shared_storage_timeout: float = Field(default=60, gt=0, allow_inf_nan=False)


def choose(
    settings: ExecutorSettings, kind: str | None = None, address: str | None = None
) -> ExecutorSettings:
    """The suite file's settings with the command line's `--executor`/`--address` applied;
    InputError for an address with the local executor, Ray not installed, or no cluster
    listening at the address."""
    update = {k: v for k, v in (("kind", kind), ("address", address)) if v is not None}
    chosen = settings.model_copy(update=update)
    if chosen.address is not None and not chosen.address.strip():
        raise InputError(
            "executor.address (--address): empty; give auto, HOST:PORT or ray://HOST:PORT "
            "(or leave it out to start a cluster on this machine)"
        )
    if chosen.kind == "local" and chosen.address is not None:
        raise InputError(
            "executor.address (--address): joining a Ray cluster needs the ray executor "
            "(--executor ray or executor: {kind: ray})"
        )
    if chosen.kind == "ray":
        require_ray()
        if chosen.address not in (None, "auto"):
            _check_reachable(chosen.address)
    return chosen


def _check_reachable(address: str) -> None:
    """InputError when nothing listens at [ray://]HOST:PORT (ray.init would retry for
    minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as error:
        raise InputError(
            f"executor.address: no Ray cluster at {address} ({error}); start one with "
            "`ray start --head`, or give its HOST:PORT, `auto` or ray://HOST:10001"
        ) from None


def require_ray() -> ModuleType:
    """The `ray` module, or InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(
            f"executor ray: Ray is not installed; install it with {INSTALL_HINT}"
        ) from None
    return ray

"""Many processes: jaxfeat on JAX's multi-controller runtime (``jax.distributed``).

One process runs per host (or per GPU), each calls :func:`initialize` once, before any other JAX
call, and then every process runs the same program. :func:`jaxfeat.fit_batch` and
:func:`jaxfeat.required_features_batch`, called by every process with the same inputs, split the
targets into one contiguous share per process (:func:`share`), fit each share on that process's
own devices, and gather the results (:func:`gather`), so every process returns the whole result,
bit for bit the one a single process computes with the same key: a target's fit depends only on
its own inputs and key, never on which batch or process it runs in.

Nothing here runs collectives inside the fits: processes exchange only the finished results, once
per call, so a share runs at the speed of one process and the hosts need no fast interconnect.

Code whose processes do different work, such as a sweep that gives each process its own rows,
runs it inside :func:`local`, where jaxfeat's calls stay on the calling process.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> None:
    """Joins this process to a multi-process JAX job (``jax.distributed.initialize``).

    Call it once per process, before any other JAX call. With no arguments JAX finds the job
    itself where a cluster manager describes it (SLURM, Open MPI, Cloud TPU); on other machines
    give all three. CPU processes exchange results over the gloo collectives, which this turns on
    (JAX's CPU client has no other portable ones); GPUs and TPUs use their own.

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable from every process.
      num_processes: number of processes in the job.
      process_id: this process's index, 0 to ``num_processes - 1``.
      local_device_ids: the local devices this process uses (default: all of them), e.g. one
        GPU per process on a multi-GPU node.
      initialization_timeout: seconds to wait for every process to join.

    Raises:
      ValueError: for a partial or inconsistent set of arguments.

    Example:
      On each of two processes (``--process-id 0`` and ``1``)::

        jaxfeat.distributed.initialize("127.0.0.1:12355", num_processes=2, process_id=0)
        res = jaxfeat.fit_batch(t, probs, k=4)  # each process fits half, both get all of it
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "give coordinator_address, num_processes and process_id together, or none of them "
            "for JAX to find the job itself (SLURM, Open MPI, TPU)."
        )
    if num_processes is not None:
        if isinstance(num_processes, bool) or not isinstance(num_processes, int):
            raise ValueError(f"num_processes={num_processes!r} must be an int >= 1.")
        if num_processes < 1:
            raise ValueError(f"num_processes={num_processes} must be >= 1.")
        if (
            isinstance(process_id, bool)
            or not isinstance(process_id, int)
            or not 0 <= process_id < num_processes
        ):
            raise ValueError(
                f"process_id={process_id!r} must be an int from 0 to num_processes - 1 = "
                f"{num_processes - 1}."
            )
        if ":" not in str(coordinator_address):
            raise ValueError(
                f"coordinator_address={coordinator_address!r} must be 'host:port', e.g. "
                "'127.0.0.1:12355'."
            )
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )


def launched_processes() -> int:
    """How many processes a cluster manager started this job with, or 1 where none did.

    SLURM's ``srun`` and Open MPI's ``mpirun`` describe the job in the environment, which
    ``jax.distributed.initialize()`` reads when called with no arguments; Cloud TPU slices are
    found by JAX itself and not here (call :func:`initialize` there).

    Example:
      >>> launched_processes()  # not under srun or mpirun
      1
    """
    if "SLURM_STEP_NODELIST" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))
    if "OMPI_MCA_orte_hnp_uri" in os.environ:
        return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    return 1


_LOCAL = contextvars.ContextVar("jaxfeat_distributed_local", default=False)


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Within the block, jaxfeat's fits and counts run on this process's devices only.

    For code where each process works on inputs of its own: without it, a
    :func:`jaxfeat.fit_batch` call would wait for the other processes to make the same call.

    Example:
      >>> import jaxfeat
      >>> with local():
      ...     res = jaxfeat.fit(jaxfeat.targets.html_closing_tag(), k=1)
      >>> bool(res.converged)
      True
    """
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def spreading() -> bool:
    """Whether jaxfeat's batched calls split their targets over the processes here: in a job of
    several processes, outside :func:`local`.

    Example:
      >>> spreading()  # one process
      False
    """
    return not _LOCAL.get() and jax.process_count() > 1


def share(n: int) -> tuple[int, int, int]:
    """This process's contiguous share of ``n`` items, when every process splits the same list.

    Shares are equal, ``size = ceil(n / process_count)``, so every process makes the same calls
    with the same shapes (the last shares are short, or empty, and are padded by the caller).

    Args:
      n: number of items (>= 0).

    Returns:
      ``(start, stop, size)``: items ``start:stop`` are this process's; ``size`` is every
      process's padded share. Inside :func:`local`, or with one process, all of them.

    Example:
      >>> share(10)  # one process: everything
      (0, 10, 10)
    """
    count, index = (jax.process_count(), jax.process_index()) if spreading() else (1, 0)
    size = -(-n // count)
    start = min(n, index * size)
    return start, min(n, start + size), size


def share_rows(n: int) -> list[int]:
    """This process's share of ``range(n)`` (:func:`share`) as row indices, padded to the common
    size by repeating its last row (an empty share repeats row ``n - 1``), ready for
    :func:`gather`.

    Example:
      >>> share_rows(3)  # one process
      [0, 1, 2]
    """
    start, stop, size = share(n)
    rows = list(range(start, stop)) or [n - 1]
    return rows + [rows[-1]] * (size - len(rows))


def gather(tree: Any, n: int) -> Any:
    """Concatenates every process's share of a pytree of arrays, in process order.

    Each leaf is this process's ``(size, ...)`` share from :func:`share` (padded to ``size``);
    the result holds the first ``n`` rows of all shares, as NumPy arrays, on every process. The
    bytes are sent as they are, so float64 results stay float64 whether or not JAX has x64 on.
    With one process, or inside :func:`local`, the leaves come back unchanged (as NumPy arrays).

    Args:
      tree: pytree of (size, ...) arrays, the same structure and shapes on every process.
      n: number of rows of the whole result.

    Returns:
      The same pytree with (n, ...) NumPy leaves.

    Example:
      >>> import numpy as np
      >>> gather({"x": np.arange(3.0)}, 3)["x"]
      array([0., 1., 2.])
    """
    if not spreading():
        return jax.tree.map(lambda x: np.asarray(x)[:n], tree)
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.ascontiguousarray(np.asarray(x)) for x in leaves]
    # One gather of raw bytes for the whole tree: JAX would narrow float64 to float32 without
    # x64, and one collective per leaf costs a round trip each.
    flat = np.concatenate([a.reshape(a.shape[0], -1).view(np.uint8) for a in arrays], axis=1)
    every = np.asarray(multihost_utils.process_allgather(flat))
    every = every.reshape(-1, flat.shape[1])[:n]
    out, col = [], 0
    for a in arrays:
        width = a[:1].nbytes
        part = np.ascontiguousarray(every[:, col : col + width])
        out.append(part.view(a.dtype).reshape((n, *a.shape[1:])))
        col += width
    return jax.tree.unflatten(treedef, out)

"""Jobs of several processes: joining one from the command line, and starting one here.

:func:`add_distributed_arguments` and :func:`start_distributed` give a script the options
``--coordinator HOST:PORT --num-processes N --process-id I`` (or none, under ``srun`` or
``mpirun``) and join the job they describe. On a cluster the cluster manager starts the
processes; on one machine :class:`LocalJob` does, each with ``--coordinator 127.0.0.1:PORT
--num-processes N --process-id I`` appended to the same command, and waits for all of them,
killing every process of the job if one fails or the time runs out, so that none is left waiting
for a dead peer.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jaxfeat.distributed import initialize, launched_processes

from .store import Processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it).

    Example:
      >>> 0 < free_port() < 65536
      True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Finished:
    """One process's end: exit code (negative: killed by that signal) and output."""

    returncode: int
    stdout: str
    stderr: str


class LocalJob:
    """``n`` processes of one command on this machine, each told its place in the job.

    Args:
      command: the program and its arguments, e.g. ``["jaxfeat", "reproduce"]``; a first
        element ``"python"`` means this interpreter.
      n: number of processes (>= 1).
      port: the coordinator's port on 127.0.0.1 (default: a free one).
      env: extra environment variables (``JAX_PLATFORMS=cpu`` is set unless given).
      cwd: working directory.

    Attributes:
      procs: the processes, in order of ``--process-id``. Their output goes to temporary files
        (a pipe nobody reads would block a chatty process).

    Example:
      >>> job = LocalJob(["python", "-c", "import sys; print(sys.argv[-1])"], 2)
      >>> [f.stdout.strip() for f in job.finish(timeout=60)]
      ['0', '1']
    """

    def __init__(
        self,
        command: Sequence[str],
        n: int,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> None:
        if n < 1:
            raise ValueError(f"n={n} must be >= 1.")
        self.port = free_port() if port is None else port
        cmd = [sys.executable if command[0] == "python" else command[0], *command[1:]]
        full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
        self._files = [
            (tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(n)
        ]
        self.procs = [
            subprocess.Popen(
                [
                    *cmd,
                    "--coordinator",
                    f"127.0.0.1:{self.port}",
                    "--num-processes",
                    str(n),
                    "--process-id",
                    str(i),
                ],
                env=full_env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                text=True,
            )
            for i, (out, err) in enumerate(self._files)
        ]

    def finish(self, timeout: float) -> list[Finished]:
        """Waits for every process; on a failure or after ``timeout`` seconds kills all of them.

        Returns:
          One :class:`Finished` per process, in order.
        """
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs):
            failed = any(p.poll() not in (None, 0) for p in self.procs)
            if failed or time.monotonic() > deadline:
                self.kill()
                break
            time.sleep(0.05)
        return [
            Finished(p.returncode, self._read(out), self._read(err))
            for p, (out, err) in zip(self.procs, self._files, strict=True)
        ]

    def kill(self) -> None:
        """Kills every process that is still running and waits for it."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        return f.read()


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that join a multi-process job (see :func:`start_distributed`)."""
    group = parser.add_argument_group(
        "many processes (jax.distributed; none needed under srun or mpirun)"
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N - 1")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="join a job that jax.distributed.initialize() finds by itself (e.g. a TPU slice)",
    )


def require_shared_paths(
    parser: argparse.ArgumentParser, procs: Processes, out: object, figures: object
) -> None:
    """Stops with a usage error in a job of several processes unless ``--out`` and ``--figures``
    are given: each process would otherwise make its own temporary directories, and the job's
    rows and figures would be split between them.

    Example:
      >>> require_shared_paths(argparse.ArgumentParser(), Processes(0, 1), None, None)  # one
    """
    if procs.count > 1 and not (out and figures):
        parser.error("a job of several processes needs --out and --figures: one shared place.")


def start_distributed(args: argparse.Namespace) -> Processes:
    """Joins the job the options of :func:`add_distributed_arguments` describe, if any.

    With ``--coordinator``, ``--num-processes`` and ``--process-id`` (all three), or
    ``--distributed``, or under a cluster manager's launcher that started several processes
    (:func:`jaxfeat.distributed.launched_processes`), this calls
    :func:`jaxfeat.distributed.initialize`; otherwise the job is this one process.

    Returns:
      This process of the job.

    Raises:
      ValueError: for a partial set of the three options.

    Example:
      >>> parser = argparse.ArgumentParser()
      >>> add_distributed_arguments(parser)
      >>> start_distributed(parser.parse_args([]))
      Processes(index=0, count=1)
    """
    given = (args.coordinator, args.num_processes, args.process_id)
    if any(x is not None for x in given) or args.distributed or launched_processes() > 1:
        initialize(*given)
    return Processes.from_jax()

"""A results store for long, resumable sweeps: one JSON file per sweep, rewritten atomically.

A sweep is a list of rows (plain dicts), each keyed by a stable id built from the sweep name and the
row's parameters. :class:`ResultsStore` rewrites the whole file after every row or small group of
rows: the new content goes to a temporary file in the same directory, is flushed and fsynced, and
then ``os.replace`` swaps it in, which is atomic on POSIX and Windows. A process killed at any point
therefore leaves either the previous file or the new one, never a torn one; on restart the store
loads the rows it has and the runner skips their ids, so no row is lost or written twice.

One writer per file, and no locks. In a job of several processes (:class:`Processes`) each
process owns every n-th row (:meth:`ResultsStore.mine`) and writes its rows to a part file of its
own, ``<sweep>.process-<i>.json``, atomically as above; every process reads all the parts, so a
restarted job skips every finished row whichever process finished it. :meth:`ResultsStore.merge`
then writes the sweep's one file with every row exactly once and removes the parts. A job killed
before the merge leaves the parts; the next run, with any number of processes, reads them.
Processes on one machine may instead take rows as they go, each the first to :func:`claim` it
(``jaxfeat reproduce``'s workers), writing to their parts the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

FORMAT = 1
# The process umask can only be read by setting it; done once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fmt(value: Any) -> str:
    """Formats one parameter value for a row id; floats keep 6 significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".6g")
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # NumPy / JAX scalars
        return _fmt(value.item())
    if isinstance(value, Mapping):
        return "(" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(value.items())) + ")"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def row_id(sweep: str, params: Mapping[str, Any]) -> str:
    """A stable, readable id for one row of a sweep.

    Keys are sorted and floats rounded to 6 significant digits, so the same parameters give the same
    id in every process, whatever the dict order or the last bit of a computed float.

    Args:
      sweep: the sweep's name.
      params: the parameters that identify the row (nested dicts and lists are allowed).

    Returns:
      ``"sweep/key=value,..."``.

    Example:
      >>> row_id("oscillations", {"tol": 0.001, "m": 3})
      'oscillations/m=3,tol=0.001'
      >>> row_id("t", {"x": 0.1 + 0.2}) == row_id("t", {"x": 0.3})
      True
    """
    if not sweep or "/" in sweep:
        raise ValueError(f"sweep={sweep!r} must be a non-empty name without '/'.")
    return sweep + "/" + ",".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def jsonable(value: Any) -> Any:
    """Converts arrays and NumPy/JAX scalars to JSON types; NaN and infinities become ``None``.

    Strict JSON has no NaN, and ``None`` reads back in every JSON parser.

    Example:
      >>> import numpy as np
      >>> jsonable({"a": np.array([1.0, np.nan]), "b": np.int64(3)})
      {'a': [1.0, None], 'b': 3}
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy and JAX arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise TypeError(f"cannot store a value of type {type(value).__name__} in a results file.")


def environment() -> dict[str, Any]:
    """The machine and library versions a sweep ran on (recorded once per results file).

    Returns:
      A dict with ``jax``, ``jaxlib``, ``numpy``, ``jaxfeat`` and ``python`` versions, the JAX
      ``backend``, ``device`` kind and ``device_count``, ``x64`` (whether float64 is enabled),
      ``cpu_count``, ``platform`` and ``machine``.
    """
    import jax
    import numpy as np

    import jaxfeat

    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib_version,
        "numpy": np.__version__,
        "jaxfeat": jaxfeat.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


# Share of the kernel's memory-mapping limit past which a long run drops its compiled programs.
MAP_SHARE = 0.5


def release_compiled(share: float = MAP_SHARE) -> bool:
    """Drops JAX's compiled programs when this process holds over ``share`` of the memory
    mappings the kernel allows it; call it between units of work of a long run.

    XLA's CPU backend keeps every program it compiles, each in mappings of its own (about three a
    program, measured: 200 small programs added 664 mappings, and ``jax.clear_caches`` gave back
    588). A run over many shapes compiles thousands: a ``jaxfeat reproduce --full`` worker reached
    Linux's default limit (``vm.max_map_count``, 65,530) in its toy models, where LLVM failed with
    "Cannot allocate memory" and the process died. Past ``share`` of the limit the programs are
    dropped, and the next unit compiles what it needs again; below it this costs one read of
    ``/proc/self/maps``. Where that file does not exist (not Linux) it does nothing.

    Args:
      share: the fraction of the limit, in [0, 1].

    Returns:
      Whether the programs were dropped.

    Example:
      >>> release_compiled(share=1.0)  # never past the whole limit
      False
    """
    import jax

    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    if used <= share * limit:
        return False
    jax.clear_caches()
    print(
        f"jaxfeat: {used} of {limit} memory mappings in use; dropped the compiled programs",
        file=sys.stderr,
        flush=True,
    )
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Writes a file so that ``path`` holds either the old or the new content, never a mix.

    The library's own writer is ``jaxfeat._io.atomic_write``; this module keeps a copy because it
    needs only the standard library (worker processes load it without importing JAX).

    ``write(tmp)`` writes a temporary file in the same directory (``os.replace`` is only atomic
    within one file system); it is fsynced, replaces ``path``, and the directory is fsynced so
    the rename itself survives a power cut.

    Args:
      path: destination file (its directory is created).
      write: writes the content to the file name it is given.

    Returns:
      ``path``.

    Example:
      >>> import pathlib, tempfile
      >>> out = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
      >>> atomic_write(out, lambda tmp: pathlib.Path(tmp).write_text("hello")).read_text()
      'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file private (0600), and some writers recreate it so; results
        # files get the usual permissions.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # An exception in this process (not a kill) must not leave a stray temporary file.
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON with :func:`atomic_write`.

    Args:
      path: destination file.
      obj: JSON-serialisable object (see :func:`jsonable`); NaN is refused.
    """
    text = json.dumps(obj, indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class Processes:
    """Which process of a job this is, and how the job's processes wait for each other.

    Args:
      index: this process, 0 to ``count - 1``.
      count: processes in the job.
      barrier: ``barrier(name)`` returns once every process has called it with that name.

    Example:
      >>> Processes().count, Processes(1, 2).index
      (1, 1)
    """

    # A plain class, not a dataclass: worker processes load this module without registering it.
    def __init__(
        self, index: int = 0, count: int = 1, barrier: Callable[[str], None] | None = None
    ) -> None:
        if not 0 <= index < count:
            raise ValueError(f"index={index} must be from 0 to count - 1 = {count - 1}.")
        self.index, self.count, self.barrier = index, count, barrier

    def __repr__(self) -> str:
        return f"Processes(index={self.index}, count={self.count})"

    @classmethod
    def from_jax(cls) -> Processes:
        """This process of the running JAX job (one process unless ``jax.distributed`` is on)."""
        import jax

        if jax.process_count() == 1:
            return cls()
        from jax.experimental import multihost_utils

        return cls(jax.process_index(), jax.process_count(), multihost_utils.sync_global_devices)

    def wait(self, name: str) -> None:
        """Returns once every process has called ``wait(name)`` (at once with one process)."""
        if self.count > 1:
            if self.barrier is None:
                raise ValueError("a job of several processes needs a barrier; see from_jax().")
            self.barrier(name)


class ResultsStore:
    """Rows of one sweep in one JSON file, saved atomically and resumed after a crash.

    The file holds ``{"format", "sweep", "config", "environment", "created", "updated", "rows"}``.
    ``environment`` is recorded when the file is created; a session on a different machine appends
    its own to ``other_environments`` so mixed timings are visible. ``config`` holds the settings
    that change what a row's numbers mean (fit sizes, seeds): resuming with a different config
    raises rather than mixing incomparable rows.

    Args:
      path: the JSON file (created on the first write; its directory too).
      sweep: the sweep's name, checked against the file's.
      config: JSON-able settings the rows depend on.
      fresh: discard an existing file instead of resuming it.
      record_environment: record :func:`environment` (imports JAX); turn off for tests of the store
        alone.
      processes: this process of a job of several (see the module docstring); the default is a
        job of one, which writes the sweep's file itself.

    Raises:
      ValueError: if the file belongs to another sweep or was written with another config.

    Example:
      >>> import tempfile, pathlib
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.json"
      >>> store = ResultsStore(path, "demo", record_environment=False)
      >>> rid = row_id("demo", {"m": 1})
      >>> store.add({"id": rid, "k": 4})
      >>> ResultsStore(path, "demo", record_environment=False).done(rid)
      True
      >>> import shutil; shutil.rmtree(path.parent)

    """

    def __init__(
        self,
        path: str | os.PathLike,
        sweep: str,
        *,
        config: Mapping[str, Any] | None = None,
        fresh: bool = False,
        record_environment: bool = True,
        processes: Processes | None = None,
    ) -> None:
        self.path = Path(path)
        self.sweep = sweep
        self.config = jsonable(dict(config or {}))
        self.processes = processes or Processes()
        self._rows: dict[str, dict[str, Any]] = {}
        self._own: dict[str, dict[str, Any]] = {}
        if self.processes.index == 0:
            self._clean_stale_tmp()
        env = environment() if record_environment else None
        if fresh and self.processes.index == 0:
            discard(self.path)
        # Every process must see the files as they are now, before any of them writes a row.
        self.processes.wait(f"open {self.path.name}")
        self._load(env)

    def _load(self, env: dict[str, Any] | None) -> None:
        old = main = load(self.path)
        parts = [(part, load(part)) for part in self._parts()]
        for part, data in parts:
            if data is not None:
                self._check(part, data)
        if old is None:
            old = next((data for _, data in parts if data is not None), None)
        if old is None:
            self._meta = {
                "format": FORMAT,
                "sweep": self.sweep,
                "config": self.config,
                "environment": env,
                "created": _now(),
            }
            return
        self._check(self.path, old)
        self._meta = {k: v for k, v in old.items() if k != "rows"}
        if env is not None and env != old.get("environment"):
            others = self._meta.setdefault("other_environments", [])
            if env not in others:
                others.append(env)
        for row in old["rows"] if old is main else []:
            self._rows[row["id"]] = row
        for part, data in parts:
            for row in [] if data is None else data["rows"]:
                self._rows.setdefault(row["id"], row)
                if part == self._part():
                    self._own[row["id"]] = row

    def _check(self, path: Path, data: dict[str, Any]) -> None:
        if data.get("sweep") != self.sweep:
            raise ValueError(
                f"{path} holds sweep {data.get('sweep')!r}, not {self.sweep!r}; use another file."
            )
        if data.get("config") != self.config:
            raise ValueError(
                f"{path} was written with config {data.get('config')} but this run uses "
                f"{self.config}; delete the file or pass fresh=True to start the sweep again."
            )

    def _parts(self) -> list[Path]:
        return parts(self.path)

    def _part(self) -> Path:
        return self.path.with_name(
            f"{self.path.stem}.process-{self.processes.index}{self.path.suffix}"
        )

    def _clean_stale_tmp(self) -> None:
        # Left behind only by a process killed between creating and renaming its temporary file.
        if self.path.parent.is_dir():
            stem, suffix = self.path.stem, self.path.suffix
            for pattern in (f".{self.path.name}.*.tmp", f".{stem}.process-*{suffix}.*.tmp"):
                for tmp in self.path.parent.glob(pattern):
                    tmp.unlink(missing_ok=True)

    def done(self, row_id: str) -> bool:
        """Whether a row with this id is already stored (by any process)."""
        return row_id in self._rows

    def mine(self, ids: Sequence[str], groups: Sequence[Any] | None = None) -> list[str]:
        """The ids of ``ids`` this process computes: every ``count``-th from its ``index``, less
        those already stored.

        The split depends on the order of ``ids`` only, not on what is stored, so every process
        agrees on it at any point of a resumed job, and no row is computed by two processes.

        Args:
          ids: every row id of the sweep, in its order.
          groups: optional label per id; rows of one label (computed in one call, whose numbers
            depend on which rows share it) go to one process, every ``count``-th label.

        Example:
          >>> import tempfile, pathlib
          >>> path = pathlib.Path(tempfile.mkdtemp()) / "demo.json"
          >>> ResultsStore(path, "demo", record_environment=False).mine(["a", "b", "c"])
          ['a', 'b', 'c']
          >>> second = Processes(1, 2, barrier=lambda name: None)  # of two processes
          >>> ResultsStore(path, "demo", record_environment=False, processes=second).mine(
          ...     ["a", "b", "c"]
          ... )
          ['b']
        """
        n, i = self.processes.count, self.processes.index
        labels = list(range(len(ids))) if groups is None else list(groups)
        rank: dict[Any, int] = {}
        for label in labels:
            rank.setdefault(label, len(rank))
        return [
            rid
            for rid, label in zip(ids, labels, strict=True)
            if rank[label] % n == i and rid not in self._rows
        ]

    def __contains__(self, row_id: object) -> bool:
        return row_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The stored rows, in the order they were first added."""
        return list(self._rows.values())

    @property
    def environment(self) -> dict[str, Any] | None:
        return self._meta.get("environment")

    def add(self, row: Mapping[str, Any]) -> None:
        """Adds (or replaces) one row and saves the file; see :meth:`add_many`."""
        self.add_many([row])

    def add_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Adds rows (each with an ``"id"``; a stored id is replaced in place) and saves atomically.

        Raises:
          ValueError: if a row has no ``"id"``.
        """
        for row in rows:
            if "id" not in row:
                raise ValueError(f"row {dict(row)} has no 'id'; build one with row_id().")
            self._rows[str(row["id"])] = self._own[str(row["id"])] = jsonable(dict(row))
        self.save()

    def save(self) -> None:
        """Writes the file atomically (also creates it when no row was added yet).

        In a job of several processes this process's part file; with one process the sweep's
        file, with any parts an earlier job left, which are then removed.
        """
        if self.processes.count > 1:
            rows = list(self._own.values())
            atomic_write_json(self._part(), {**self._meta, "updated": _now(), "rows": rows})
            return
        atomic_write_json(self.path, {**self._meta, "updated": _now(), "rows": self.rows})
        for part in self._parts():
            part.unlink(missing_ok=True)

    def merge(self, order: Sequence[str] = ()) -> None:
        """Writes the sweep's one file from every process's part, each row once, and removes the
        parts; every process calls it, and on return every process holds every row.

        Args:
          order: ids in the order the file lists them (others follow in the order they came).
        """
        p = self.processes
        rank = {rid: j for j, rid in enumerate(order)}

        def ordered(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            rows = sorted(rows, key=lambda r: rank.get(r["id"], len(rank)))
            return {r["id"]: r for r in rows}

        if p.count == 1:
            self._rows = ordered(self.rows)
            self.save()
            return
        p.wait(f"merge {self.path.name}")
        if p.index == 0:
            self._rows = {}
            self._load(None)
            self._rows = ordered(self.rows)
            atomic_write_json(self.path, {**self._meta, "updated": _now(), "rows": self.rows})
            for part in self._parts():
                part.unlink(missing_ok=True)
        p.wait(f"merged {self.path.name}")
        self._rows, self._own = {}, {}
        self._load(None)


def claim(claims: str | os.PathLike, key: str) -> bool:
    """Claims ``key`` for this process: ``True`` for the first caller, ``False`` ever after.

    The claim is a file in the directory ``claims``, named by a hash of ``key``, created with
    ``O_CREAT | O_EXCL``: of processes on one machine claiming at once, exactly one succeeds. It
    holds the key, for a reader. Claims outlive their process: remove the directory before a
    job starts, when no process holds one (a resumed job skips stored rows by their ids).

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> claim(d, "row a"), claim(d, "row a"), claim(d, "row b")
      (True, False, True)
    """
    claims = Path(claims)
    claims.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    try:
        fd = os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key)
    return True


def parts(path: str | os.PathLike) -> list[Path]:
    """Every process's part file of a results file (of any job, whatever its process count)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f"{path.stem}.process-*{path.suffix}"))


def discard(path: str | os.PathLike) -> None:
    """Deletes a results file and every process's part of it (those that exist)."""
    Path(path).unlink(missing_ok=True)
    for part in parts(path):
        part.unlink(missing_ok=True)


def load(path: str | os.PathLike) -> dict[str, Any] | None:
    """Reads a results file; ``None`` if it does not exist.

    Raises:
      ValueError: if the file is not a results file (it is never a torn write: see the module
        docstring), e.g. it was edited by hand.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it to start again.") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path} is not a results file (no 'rows' list); delete it or move it.")
    return data


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

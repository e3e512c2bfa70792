"""Files: reading target curves (CSV tables and NumPy ``.npz`` archives), and writing any file
atomically."""

from __future__ import annotations

import csv
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ._target import Target

# The process umask can only be read by setting it; done once, at import.
UMASK = os.umask(0o022)
os.umask(UMASK)

KINDS = ("probs", "logits", "counts")
_WHAT = {
    "probs": "probabilities, each row on the simplex",
    "logits": "logits, one softmax distribution per row",
    "counts": "non-negative next-token counts",
}
_UNIT = {"probs": "probabilities", "counts": "counts"}
_FINITE = {
    False: "every value must be finite (no NaN or inf)",
    True: "every logit must be finite, or -inf for a zero probability",
}


def read_curve(path: str | os.PathLike[str], *, kind: str = "probs") -> Target:
    """Reads a target curve p(t) from a ``.csv`` or ``.npz`` file.

    **CSV**: a header row whose first column is ``t`` and whose further columns (at least 2) are
    named by their tokens (kept verbatim, spaces included, as in ``" the"``; quote names that hold
    commas or quotes), then one row per grid point (blank lines are skipped)::

        t,cold,mild,hot
        -10,0.80,0.15,0.05
        15,0.20,0.60,0.20

    **NPZ** (``np.savez``): an array ``t`` of shape (T,), an array named like ``kind``
    (``probs``, ``logits`` or ``counts``) of shape (T, V), and optionally ``tokens``, (V,) strings.

    Rows must be sorted by strictly increasing ``t``. With ``kind="probs"`` each row must sum to 1
    up to the rounding of the target's float type (rows are then renormalised exactly); anything
    further off is an error rather than silently rescaled.

    Args:
      path: a ``.csv`` or ``.npz`` file.
      kind: what the values are: ``"probs"`` (distributions), ``"logits"`` (turned into
        distributions by a softmax per row, :meth:`Target.from_logits`) or ``"counts"``
        (maximum-likelihood distributions, :meth:`Target.from_counts`).

    Returns:
      :class:`jaxfeat.Target` with T grid points and V tokens, ``tokens`` set from the CSV header
      or the NPZ ``tokens`` array (``None`` for an NPZ file without one).

    Raises:
      ValueError: for an unknown ``kind`` or extension and for every problem in the file: the
        message names the file and, where it applies, the row (the file's line number, the
        header being line 1; for NPZ the array index) and the column (by token name) or the
        missing array.
      OSError: if the file cannot be opened.

    Example:
      >>> import os, tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     path = os.path.join(d, "weather.csv")
      ...     with open(path, "w") as f:
      ...         _ = f.write("t,cold,mild,hot\\n-10,0.8,0.15,0.05\\n15,0.2,0.6,0.2\\n")
      ...     tgt = read_curve(path)
      >>> tgt.tokens, tgt.probs.shape
      (('cold', 'mild', 'hot'), (2, 3))
    """
    name = os.fspath(path)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; use one of {', '.join(map(repr, KINDS))}.")
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        t, values, tokens, labels = _read_csv(name, kind)
    elif suffix == ".npz":
        t, values, tokens, labels = _read_npz(name, kind)
    else:
        raise ValueError(
            f"{name}: unknown file type {suffix or '(no extension)'!r}; give a .csv table "
            "(header 't,<token>,...') or a .npz archive (arrays 't' and 'probs', 'logits' or "
            "'counts')."
        )
    return _to_target(name, kind, t, values, tokens, labels)


# ---------------------------------------------------------------------------------------------
# Formats: each returns (t, values, tokens, labels) for the shared checks.


class _Labels(NamedTuple):
    """How messages name a grid point (``point``), a row of values and a cell."""

    point: Callable[[int], str]
    row: Callable[[int], str]
    cell: Callable[[int, int], str]


def _read_csv(name: str, kind: str):
    with open(name, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            return _parse_csv(reader, name, kind)
        except UnicodeDecodeError as e:
            raise ValueError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
        except csv.Error as e:  # e.g. a NUL byte or an unterminated quote
            raise ValueError(f"{name}: row {reader.line_num}: {e}.") from None


def _parse_csv(reader, name: str, kind: str):
    header = None
    for fields in reader:
        if any(s.strip() for s in fields):
            # Token names are kept verbatim: leading spaces are part of tokens like " the".
            header = [fields[0].strip(), *fields[1:]]
            header_line = reader.line_num
            break
    if header is None:
        raise ValueError(
            f"{name}: the file is empty; expected a header row 't,<token>,<token>,...' and "
            "one row per grid point."
        )
    where = f"{name}: header (line {header_line})"
    if header[0] != "t":
        stripped = [s.strip() for s in header]
        if "t" in stripped:
            raise ValueError(
                f"{where}: column 't' is column {stripped.index('t') + 1}; it must be the "
                f"first column, followed by one column per token."
            )
        raise ValueError(
            f"{where}: the first column is named {header[0]!r}, expected 't' (the latent "
            "value), followed by one column per token."
        )
    tokens = header[1:]
    for j, tok in enumerate(tokens):
        if not tok:
            raise ValueError(f"{where}: column {j + 2} has no name; name every token column.")
    _unique(
        header,
        lambda a, b, col: (
            f"{where}: columns {a + 1} and {b + 1} are both named "
            f"{col!r}; column names must be unique."
        ),
    )
    if len(tokens) < 2:
        found = f"only 1 token column ({tokens[0]!r})" if tokens else "no token columns"
        raise ValueError(
            f"{where}: {found}; a curve needs at least 2 tokens (header 't,<token>,<token>,...')."
        )
    lines: list[int] = []
    rows: list[list[float]] = []
    for fields in reader:
        line = reader.line_num
        if not any(s.strip() for s in fields):
            continue
        if len(fields) != len(header):
            raise ValueError(
                f"{name}: row {line} has {len(fields)} fields, expected {len(header)} "
                f"(t and {len(tokens)} tokens, as in the header)."
            )
        rows.append(
            [
                _number(name, line, col, cell, kind == "logits" and col != "t")
                for col, cell in zip(header, fields, strict=True)
            ]
        )
        lines.append(line)
    if not rows:
        raise ValueError(f"{name}: no data rows after the header; a curve needs at least 2.")
    data = np.asarray(rows, np.float64)
    row = lambda i: f"row {lines[i]}"
    cell = lambda i, j: f"row {lines[i]}, column {tokens[j]!r}"
    return data[:, 0], data[:, 1:], tokens, _Labels(row, row, cell)


def _number(name: str, line: int, col: str, cell: str, neg_inf: bool) -> float:
    s = cell.strip()
    where = f"{name}: row {line}, column {col!r}"
    if not s:
        raise ValueError(f"{where} is empty; every cell must be a number.")
    try:
        x = float(s)
    except ValueError:
        raise ValueError(f"{where}: {cell!r} is not a number.") from None
    if not np.isfinite(x) and not (neg_inf and x == -np.inf):
        raise ValueError(f"{where} is {cell!r}; {_FINITE[neg_inf]}.")
    return x


def _read_npz(name: str, kind: str):
    if not zipfile.is_zipfile(name):
        raise ValueError(
            f"{name}: not an .npz archive (a zip of .npy arrays, as np.savez writes: "
            "np.savez(path, t=t, probs=probs, tokens=tokens))."
        )
    try:
        archive = np.load(name, allow_pickle=False)
    except OSError:
        raise
    except (ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{name}: not a readable .npz archive ({e}).") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{name}: holds a single .npy array, not an .npz archive (np.savez).")
    with archive:
        keys = list(archive.files)
        found = ", ".join(map(repr, keys)) if keys else "none"
        if "t" not in keys:
            raise ValueError(
                f"{name}: missing array 't', the (T,) grid of latent values (arrays in the file: "
                f"{found})."
            )
        if kind not in keys:
            other = [k for k in KINDS if k in keys]
            hint = f"; to read {other[0]!r}, pass kind={other[0]!r}" if other else ""
            raise ValueError(
                f"{name}: missing array {kind!r}, the (T, V) {_WHAT[kind]}, for kind={kind!r} "
                f"(arrays in the file: {found}){hint}."
            )
        t = _array(archive, name, "t")
        values = _array(archive, name, kind)
        tokens = None
        if "tokens" in keys:
            try:
                tok = archive["tokens"]
            except ValueError as e:
                raise ValueError(f"{name}: array 'tokens' cannot be read ({e}).") from None
            if tok.ndim != 1 or tok.dtype.kind not in "US":
                raise ValueError(
                    f"{name}: array 'tokens' has shape {tok.shape} and dtype {tok.dtype}; expected "
                    "a (V,) array of strings."
                )
            tokens = [s.decode() if isinstance(s, bytes) else str(s) for s in tok.tolist()]
    if t.ndim != 1:
        raise ValueError(f"{name}: array 't' has shape {t.shape}; expected a (T,) grid.")
    if values.ndim != 2:
        raise ValueError(f"{name}: array {kind!r} has shape {values.shape}; expected (T, V).")
    if values.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name}: array {kind!r} has shape {values.shape} but 't' has {t.shape[0]} points; "
            f"expected ({t.shape[0]}, V)."
        )
    if values.shape[1] < 2:
        raise ValueError(
            f"{name}: array {kind!r} has V = {values.shape[1]} column(s); a curve needs at least "
            "2 tokens."
        )
    if tokens is not None:
        if len(tokens) != values.shape[1]:
            raise ValueError(
                f"{name}: array 'tokens' has {len(tokens)} names but {kind!r} has "
                f"V = {values.shape[1]} columns."
            )
        _unique(
            tokens,
            lambda a, b, tok: (
                f"{name}: tokens[{a}] and tokens[{b}] are both {tok!r}; token names must be unique."
            ),
        )
    names = tokens
    cell = lambda i, j: (
        f"{kind}[{i}, {j}]" + (f" (token {names[j]!r})" if names is not None else "")
    )
    if not np.all(np.isfinite(t)):
        i = int(np.flatnonzero(~np.isfinite(t))[0])
        raise ValueError(f"{name}: t[{i}] is {t[i]}; every grid point must be finite.")
    neg_inf = kind == "logits"
    bad = ~np.isfinite(values) & ~(neg_inf & (values == -np.inf))
    if np.any(bad):
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"{name}: {cell(i, j)} is {values[i, j]}; {_FINITE[neg_inf]}.")
    return t, values, tokens, _Labels(lambda i: f"t[{i}]", lambda i: f"{kind}[{i}]", cell)


def _array(archive, name: str, key: str) -> np.ndarray:
    try:
        a = archive[key]
    except ValueError as e:  # object arrays need pickle, which is never allowed
        raise ValueError(f"{name}: array {key!r} cannot be read ({e}).") from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: array {key!r} has dtype {a.dtype}; expected numbers.")
    return a.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Checks shared by the formats, each naming the row and column


def _to_target(
    name: str,
    kind: str,
    t: np.ndarray,
    values: np.ndarray,
    tokens: Sequence[str] | None,
    labels: _Labels,
) -> Target:
    point, row, cell = labels
    T, V = values.shape
    if T < 2:
        raise ValueError(f"{name}: only {T} grid point; a curve needs at least 2.")
    # The grid is checked in the target's float type, where distinct points could coincide.
    dtype = np.dtype(jnp.result_type(float))
    tt = t.astype(dtype)
    d = np.diff(tt)
    if np.any(d <= 0):
        i = int(np.flatnonzero(d <= 0)[0])
        if d[i] == 0:
            raise ValueError(
                f"{name}: {point(i)} and {point(i + 1)} have the same t = {t[i]:g}"
                + ("" if t[i] == t[i + 1] else f" (and {t[i + 1]:g}, equal in {dtype})")
                + "; merge them (average their distributions, or add their counts)."
            )
        raise ValueError(
            f"{name}: t is not increasing: {point(i + 1)} has t = {t[i + 1]:g} after "
            f"{point(i)} with t = {t[i]:g}; sort the rows by t."
        )
    if kind in ("probs", "counts"):
        neg = values < 0
        if np.any(neg):
            i, j = (int(x) for x in np.argwhere(neg)[0])
            raise ValueError(
                f"{name}: {cell(i, j)} is {values[i, j]:g}; {_UNIT[kind]} must be >= 0."
            )
        empty = values.sum(axis=1) == 0
        if np.any(empty):
            i = int(np.flatnonzero(empty)[0])
            what = "count" if kind == "counts" else "probability"
            raise ValueError(
                f"{name}: {row(i)} has every {what} 0; each row must be a distribution over the "
                "tokens (drop that grid point)."
            )
    if kind == "logits":
        empty = np.all(values == -np.inf, axis=1)
        if np.any(empty):
            i = int(np.flatnonzero(empty)[0])
            raise ValueError(
                f"{name}: {row(i)} has every logit -inf, which is no distribution; give at least "
                "one token a finite logit (or drop that grid point)."
            )
    if kind == "probs":
        sums = values.sum(axis=1)
        # The tolerance Target applies to rows in its float type (see Target's simplex check).
        atol = max(1e-6, 8 * V * float(np.finfo(dtype).eps))
        off = np.abs(sums - 1.0) > atol
        if np.any(off):
            i = int(np.flatnonzero(off)[0])
            more = int(np.count_nonzero(off)) - 1
            also = f"; {more} more {'row is' if more == 1 else 'rows are'} off too" if more else ""
            raise ValueError(
                f"{name}: {row(i)} sums to {sums[i]:.6g}, not 1 (tolerance {atol:.2g}{also}). "
                "If the values are counts, read them with kind='counts' (--kind counts); if "
                "they are unnormalised probabilities, renormalise each row to sum to 1."
            )
    try:
        if kind == "probs":
            return Target(tt, values.astype(dtype), tokens, normalize=True)
        if kind == "logits":
            return Target.from_logits(tt, values, tokens)
        return Target.from_counts(tt, values, tokens)
    except ValueError as e:  # anything the checks above missed still names the file
        raise ValueError(f"{name}: {e}") from None


def _unique(names: list[str], message: Callable[[int, int, str], str]) -> None:
    """Raises ``ValueError(message(first, second, name))`` for the first repeated name."""
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if name in seen:
            raise ValueError(message(seen[name], j, name))
        seen[name] = j


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Writes a file so that ``path`` holds either the old or the new content, never a mix.

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
        # mkstemp creates the file private (0600), and some writers recreate it so; what we
        # write gets the usual permissions.
        os.chmod(tmp, 0o666 & ~UMASK)
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

"""read_curve: good files of each kind round-trip; every bad file names its file, row and column."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jaxfeat import read_curve

GOOD = "t,cold,mild,hot\n-10,0.7,0.2,0.1\n0,0.25,0.5,0.25\n10,0.1,0.2,0.7\n"
PROBS = np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25], [0.1, 0.2, 0.7]])


def _write(tmp_path, text, name="curve.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        read_curve(path, **kwargs)
    msg = str(info.value)
    assert str(path) in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# Good files


def test_csv_probs_round_trip(tmp_path):
    tgt = read_curve(_write(tmp_path, GOOD))
    assert tgt.tokens == ("cold", "mild", "hot")
    np.testing.assert_allclose(np.asarray(tgt.t), [-10, 0, 10])
    np.testing.assert_allclose(np.asarray(tgt.probs), PROBS, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tgt.probs).sum(1), 1.0, atol=1e-6)


def test_csv_probs_rounding_is_renormalised(tmp_path):
    # Six significant digits, as a spreadsheet writes them: within float tolerance of 1.
    tgt = read_curve(_write(tmp_path, "t,a,b,c\n0,0.333333,0.333333,0.333334\n1,0.5,0.25,0.25\n"))
    np.testing.assert_allclose(np.asarray(tgt.probs)[0], 1 / 3, rtol=1e-5)


def test_csv_logits(tmp_path):
    tgt = read_curve(_write(tmp_path, "t,a,b\n0,0,0\n1,3,1\n2,0,4\n"), kind="logits")
    z = np.array([[0, 0], [3, 1], [0, 4]], float)
    expect = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(tgt.probs), expect, rtol=1e-6)


def test_csv_counts_values(tmp_path):
    tgt = read_curve(_write(tmp_path, "t,a,b\n0,3,1\n1,0,4\n"), kind="counts")
    np.testing.assert_allclose(np.asarray(tgt.probs), [[0.75, 0.25], [0.0, 1.0]])


def test_csv_details(tmp_path):
    # A byte-order mark, blank lines, quoted names with commas, token names kept verbatim.
    text = '\ufefft,"a, b", the,\\n\n\n0,0.5,0.25,0.25\n\n1,0.2,0.3,0.5\n\n'
    tgt = read_curve(_write(tmp_path, text))
    assert tgt.tokens == ("a, b", " the", "\\n")
    assert tgt.probs.shape == (2, 3)


def test_csv_logits_minus_inf_is_a_zero(tmp_path):
    tgt = read_curve(_write(tmp_path, "t,a,b\n0,0,-inf\n1,0,0\n"), kind="logits")
    np.testing.assert_allclose(np.asarray(tgt.probs), [[1, 0], [0.5, 0.5]])


@pytest.mark.parametrize("kind", ["probs", "logits", "counts"])
def test_npz_each_kind(tmp_path, kind):
    values = {"probs": PROBS, "logits": np.log(PROBS), "counts": PROBS * 20}[kind]
    path = tmp_path / "curve.npz"
    np.savez(
        path,
        t=np.array([-10.0, 0.0, 10.0]),
        tokens=np.array(["cold", "mild", "hot"]),
        **{kind: values},
    )
    tgt = read_curve(path, kind=kind)
    assert tgt.tokens == ("cold", "mild", "hot")
    np.testing.assert_allclose(np.asarray(tgt.probs), PROBS, rtol=1e-5)


def test_npz_without_tokens(tmp_path):
    path = tmp_path / "curve.npz"
    np.savez(path, t=np.arange(3.0), probs=PROBS)
    assert read_curve(path).tokens is None


def test_csv_and_npz_agree(tmp_path):
    csv_tgt = read_curve(_write(tmp_path, GOOD))
    path = tmp_path / "curve.npz"
    np.savez(
        path,
        t=np.asarray(csv_tgt.t),
        probs=np.asarray(csv_tgt.probs),
        tokens=np.array(csv_tgt.tokens),
    )
    npz_tgt = read_curve(path)
    np.testing.assert_array_equal(np.asarray(npz_tgt.probs), np.asarray(csv_tgt.probs))
    assert npz_tgt.tokens == csv_tgt.tokens


# ---------------------------------------------------------------------------------------------
# Bad CSV files: (text, kind, the fragments the message must contain)

BAD_CSV = {
    "empty": ("", "probs", ["empty", "header"]),
    "blank": ("\n \n", "probs", ["empty"]),
    "first column not t": ("x,a,b\n0,0.5,0.5\n", "probs", ["first column", "'x'", "'t'"]),
    "t not first": ("a,t,b\n0.5,0,0.5\n", "probs", ["column 't'", "column 2", "first"]),
    "one token": ("t,a\n0,1\n1,1\n", "probs", ["only 1 token column ('a')", "at least 2"]),
    "no tokens": ("t\n0\n1\n", "probs", ["no token columns", "at least 2"]),
    "duplicate columns": ("t,a,b,a\n0,0.2,0.3,0.5\n", "probs", ["columns 2 and 4", "'a'"]),
    "unnamed column": ("t,a,,b\n0,0.2,0.3,0.5\n", "probs", ["column 3", "no name"]),
    "too few fields": ("t,a,b\n0,0.5,0.5\n1,0.5\n", "probs", ["row 3", "2 fields", "expected 3"]),
    "too many fields": ("t,a,b\n0,0.5,0.5,0\n1,0.5,0.5\n", "probs", ["row 2", "4 fields"]),
    "not a number": (
        "t,cold,mild\n" + "".join(f"{i},0.5,0.5\n" for i in range(5)) + "5,0.5,abc\n",
        "probs",
        ["row 7, column 'mild': 'abc' is not a number"],
    ),
    "t not a number": (
        "t,a,b\n0,0.5,0.5\nnoon,0.5,0.5\n",
        "probs",
        ["row 3, column 't'", "'noon'"],
    ),
    "empty cell": ("t,a,b\n0,0.5,0.5\n1,,0.5\n", "probs", ["row 3, column 'a'", "empty"]),
    "nan": ("t,a,b\n0,0.5,nan\n1,0.5,0.5\n", "probs", ["row 2, column 'b'", "nan", "finite"]),
    "inf": ("t,a,b\n0,0.5,0.5\n1,inf,0.5\n", "counts", ["row 3, column 'a'", "finite"]),
    "+inf logit": ("t,a,b\n0,0,0\n1,inf,0\n", "logits", ["row 3, column 'a'", "-inf"]),
    "nan t": ("t,a,b\nnan,0.5,0.5\n1,0.5,0.5\n", "probs", ["row 2, column 't'"]),
    "all -inf logits": ("t,a,b\n0,0,0\n1,-inf,-inf\n", "logits", ["row 3", "-inf"]),
    "negative prob": (
        "t,a,b\n0,0.5,0.5\n1,1.25,-0.25\n",
        "probs",
        ["row 3, column 'b'", "-0.25", ">= 0"],
    ),
    "negative count": ("t,a,b\n0,3,1\n1,-1,4\n", "counts", ["row 3, column 'a'", "-1", ">= 0"]),
    "zero counts": ("t,a,b\n0,3,1\n1,0,0\n", "counts", ["row 3", "every count 0"]),
    "row sum": (
        "t,a,b\n0,0.5,0.5\n1,0.5,0.4\n",
        "probs",
        ["row 3", "sums to 0.9", "--kind counts", "renormalise"],
    ),
    "counts as probs": (
        "t,a,b\n0,3,1\n1,0,4\n",
        "probs",
        ["row 2", "sums to 4", "1 more row is off", "counts"],
    ),
    "unsorted t": (
        "t,a,b\n0,0.5,0.5\n2,0.5,0.5\n1,0.5,0.5\n",
        "probs",
        ["row 4", "row 3", "not increasing", "sort"],
    ),
    "duplicate t": (
        "t,a,b\n0,0.5,0.5\n1,0.5,0.5\n1,0.2,0.8\n",
        "probs",
        ["row 3 and row 4", "same t = 1"],
    ),
    "no rows": ("t,a,b\n", "probs", ["no data rows"]),
    "one row": ("t,a,b\n0,0.5,0.5\n", "probs", ["only 1 grid point", "at least 2"]),
}


@pytest.mark.parametrize("case", list(BAD_CSV), ids=list(BAD_CSV))
def test_bad_csv(tmp_path, case):
    text, kind, fragments = BAD_CSV[case]
    msg = _error(_write(tmp_path, text), kind=kind)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_rows_are_line_numbers(tmp_path):
    # Blank lines still count: the row is the file's line number, the header line 1.
    msg = _error(_write(tmp_path, "t,a,b\n\n0,0.5,0.5\n\n1,0.5,x\n"))
    assert "row 5, column 'b': 'x' is not a number" in msg


def test_unknown_extension_and_kind(tmp_path):
    msg = _error(_write(tmp_path, GOOD, "curve.txt"))
    assert ".csv" in msg and ".npz" in msg and "'.txt'" in msg
    with pytest.raises(ValueError, match=r"kind='density' is unknown.*'probs', 'logits', 'counts'"):
        read_curve(_write(tmp_path, GOOD), kind="density")


def test_not_utf8(tmp_path):
    path = tmp_path / "curve.csv"
    path.write_bytes(b"t,a,b\n0,0.5,0.5\xff\n")
    assert "not UTF-8" in _error(path)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_curve(tmp_path / "nowhere.csv")


# ---------------------------------------------------------------------------------------------
# Bad NPZ files


def _npz(tmp_path, **arrays):
    path = tmp_path / "curve.npz"
    np.savez(path, **arrays)
    return path


T3 = np.array([0.0, 1.0, 2.0])


@pytest.mark.parametrize(
    ("arrays", "kind", "fragments"),
    [
        ({"probs": PROBS}, "probs", ["missing array 't'", "(T,)", "'probs'"]),
        ({"t": T3}, "probs", ["missing array 'probs'", "(T, V)", "kind='probs'"]),
        ({"t": T3, "logits": PROBS}, "probs", ["missing array 'probs'", "kind='logits'"]),
        ({"t": T3, "probs": PROBS}, "counts", ["missing array 'counts'", "kind='probs'"]),
        ({"t": T3, "probs": PROBS[:2]}, "probs", ["'probs' has shape (2, 3)", "3 points"]),
        ({"t": T3, "probs": PROBS[:, :1]}, "probs", ["V = 1", "at least 2"]),
        ({"t": T3, "probs": PROBS.ravel()}, "probs", ["'probs' has shape (9,)", "(T, V)"]),
        ({"t": T3[:, None], "probs": PROBS}, "probs", ["'t' has shape (3, 1)", "(T,)"]),
        ({"t": T3, "probs": np.array([["a"] * 3] * 3)}, "probs", ["'probs'", "dtype"]),
        (
            {"t": T3, "probs": PROBS, "tokens": np.array(["a", "b"])},
            "probs",
            ["'tokens' has 2 names", "V = 3"],
        ),
        (
            {"t": T3, "probs": PROBS, "tokens": np.array(["a", "b", "a"])},
            "probs",
            ["tokens[0] and tokens[2]", "'a'"],
        ),
        ({"t": T3, "probs": PROBS, "tokens": np.arange(3)}, "probs", ["'tokens'", "strings"]),
        (
            {"t": np.array([0.0, 2.0, 1.0]), "probs": PROBS},
            "probs",
            ["t[2]", "t[1]", "not increasing"],
        ),
        ({"t": np.array([0.0, 1.0, 1.0]), "probs": PROBS}, "probs", ["t[1] and t[2]", "same t"]),
        ({"t": np.array([0.0, np.nan, 2.0]), "probs": PROBS}, "probs", ["t[1]", "finite"]),
        (
            {"t": T3, "probs": np.where(np.eye(3, dtype=bool), np.nan, PROBS)},
            "probs",
            ["probs[0, 0]", "finite"],
        ),
        (
            {"t": T3, "probs": PROBS * [1, 1, -1], "tokens": np.array(["cold", "mild", "hot"])},
            "probs",
            ["probs[0, 2] (token 'hot')", ">= 0"],
        ),
        ({"t": T3, "probs": PROBS * 0.9}, "probs", ["probs[0]", "sums to 0.9", "counts"]),
    ],
    ids=lambda x: None if isinstance(x, (dict, list)) else x,
)
def test_bad_npz(tmp_path, arrays, kind, fragments):
    msg = _error(_npz(tmp_path, **arrays), kind=kind)
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "curve.npz"
    path.write_bytes(b"not a zip file")
    assert re.search(r"not .*\.npz archive", _error(path))
    np.save(tmp_path / "single.npy", PROBS)
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    assert "single" in _error(tmp_path / "single.npz")

"""Reading the user's files (numeric CSV tables, JSON/YAML model files), parsing list options,
writing JSON. Every problem becomes a :class:`CliError` naming the file, line and column."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .errors import CliError


@dataclass
class Table:
    """A numeric table read from a CSV file: ``values`` ``(n_rows, n_columns)`` float64."""

    values: np.ndarray
    columns: List[str]
    has_header: bool
    path: str


def _open_text(path: str):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a folder, not a file") from None
    except OSError as err:
        raise CliError(f"{path}: cannot open: {err.strerror or err}") from None


def _read_lines(path: str) -> List[str]:
    with _open_text(path) as f:
        try:
            return f.read().splitlines()
        except UnicodeDecodeError:
            raise CliError(f"{path}: not a text file (cannot decode it as UTF-8)") from None


def _number(cell: str) -> Optional[float]:
    try:
        return float(cell)
    except ValueError:
        return None


def _delimiter(lines: Sequence[str]) -> str:
    """Comma unless the first line uses semicolons or tabs and no commas."""
    first = lines[0]
    if "," in first:
        return ","
    for sep in (";", "\t"):
        if sep in first:
            return sep
    return ","


def _positions(columns: List[str], has_header: bool, text: str, path: str, option: str) -> List[int]:
    """The positions of the columns ``text`` names (comma-separated header names or numbers from 1)."""
    wanted = [c.strip() for c in text.split(",") if c.strip()]
    if not wanted:
        raise CliError(f"{option}: give column names or numbers, separated by commas")
    picked = []
    for item in wanted:
        if item in columns:
            picked.append(columns.index(item))
        elif item.isdigit() and 1 <= int(item) <= len(columns):
            picked.append(int(item) - 1)
        else:
            known = ", ".join(repr(c) for c in columns) if has_header else f"1 to {len(columns)}"
            raise CliError(f"{option}: {path} has no column {item!r} (columns: {known})")
    if len(set(picked)) != len(picked):
        raise CliError(f"{option}: a column is named twice")
    return picked


#: fields read as missing values under ``--missing`` (compared without case), besides an empty one
MISSING_MARKS = ("na", "n/a", "nan", "null", "none", ".")


def read_table(path: str, columns_text: Optional[str] = None, option: str = "--columns",
               missing: bool = False) -> Table:
    """A CSV of numbers, with or without a header (a first row that is not all numbers); with
    ``columns_text`` (comma-separated names or numbers from 1) only those columns, in that order, and
    only they need to be numeric. With ``missing``, an empty field (or NA, N/A, NaN, null, None
    or ``.``, in any case) is a missing value, read as NaN; without it, it is an error that names
    ``--missing``.

    Blank lines and lines starting with ``#`` are skipped; fields may be separated by commas,
    semicolons or tabs.
    """
    numbered = [(i + 1, line) for i, line in enumerate(_read_lines(path))
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise CliError(f"{path}: the file holds no data")
    sep = _delimiter([line for _, line in numbered])
    rows = [(n, [c.strip() for c in cells])
            for (n, _), cells in zip(numbered, csv.reader([line for _, line in numbered], delimiter=sep))]
    first = rows[0][1]
    # a header: a first row with a field that is neither a number nor a missing value
    has_header = any(_number(c) is None and not _is_missing_mark(c) for c in first)
    if has_header:
        columns, rows = first, rows[1:]
        if not rows:
            raise CliError(f"{path}: the file has a header but no data rows")
    else:
        columns = [f"column {j + 1}" for j in range(len(first))]
    width = len(columns)
    keep = (list(range(width)) if columns_text is None
            else _positions(list(columns), has_header, columns_text, path, option))
    values = np.empty((len(rows), len(keep)), dtype=np.float64)
    for i, (line_no, cells) in enumerate(rows):
        if len(cells) != width:
            raise CliError(f"{path}, line {line_no}: {len(cells)} fields, expected {width} "
                           f"(as in the {'header' if has_header else 'first row'})")
        for out_j, j in enumerate(keep):
            cell = cells[j]
            if missing and _is_missing_mark(cell):
                values[i, out_j] = np.nan
                continue
            x = _number(cell)
            where = f"{path}, line {line_no}, column {columns[j]!r}"
            if x is None or (math.isnan(x) and not missing):
                if not cell or _is_missing_mark(cell):
                    raise CliError(f"{where}: {'an empty field' if not cell else repr(cell)} is a missing value; "
                                   "give --missing to read missing values")
                raise CliError(f"{where}: {cell!r} is not a number; every column read must be numeric "
                               "(--columns picks the ones to read)")
            if not math.isfinite(x):
                raise CliError(f"{where}: {cell!r} is not a finite number")
            values[i, out_j] = x
    if missing and len(rows):
        empty = [columns[j] for out_j, j in enumerate(keep) if np.isnan(values[:, out_j]).all()]
        if empty:
            raise CliError(f"{path}: column {empty[0]!r} has no value (every field missing); leave it out with --columns")
    return Table(values, [columns[j] for j in keep], has_header, path)


def _is_missing_mark(cell: str) -> bool:
    return not cell or cell.lower() in MISSING_MARKS


def read_model_file(path: str) -> Dict[str, Any]:
    """A JSON (``.json``) or YAML (``.yaml``/``.yml``, needs PyYAML) file holding a mapping."""
    text = "\n".join(_read_lines(path))
    ext = os.path.splitext(path)[1].lower()
    if ext in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CliError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                           "or write the model as a .json file") from None
        try:
            data = yaml.safe_load(text)
        except Exception as err:  # yaml.YAMLError and its subclasses
            raise CliError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CliError(f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_int_list(text: str, option: str, minimum: int = 1) -> List[int]:
    """``"100,200,150"`` -> ``[100, 200, 150]`` (whole numbers >= ``minimum``)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise CliError(f"{option}: {item!r} is not a whole number") from None
        if value < minimum:
            raise CliError(f"{option}: {value} is below {minimum}")
        out.append(value)
    return out


def _count(text: str, label: str) -> int:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--counts: the {label} is {text!r}, not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise CliError(f"--counts: the {label} is {text!r}, not a whole number")
    if value < 0:
        raise CliError(f"--counts: the {label} is {text}; counts must be >= 0")
    return int(value)


def parse_counts(text: str, phenotypes: Sequence[str]) -> Union[List[int], Dict[str, int]]:
    """``"85,196,341"`` in phenotype order, or ``"carbonaria=85,insularia=196,typica=341"``."""
    items = [s for s in (part.strip() for part in text.split(",")) if s]
    names = [str(p) for p in phenotypes]
    listed = ", ".join(names)
    if not items:
        raise CliError(f"--counts is empty; give one count per phenotype ({listed})")
    if any("=" in item for item in items):
        if not all("=" in item for item in items):
            raise CliError("--counts: use either counts in phenotype order or name=count for all, not both")
        counts: Dict[str, int] = {}
        for item in items:
            name, value = (s.strip() for s in item.split("=", 1))
            if name not in names:
                raise CliError(f"--counts: unknown phenotype {name!r}; the phenotypes are {listed}")
            if name in counts:
                raise CliError(f"--counts: phenotype {name!r} is given twice")
            counts[name] = _count(value, f"count of {name!r}")
        missing = [n for n in names if n not in counts]
        if missing:
            raise CliError(f"--counts: no count for phenotype(s) {', '.join(missing)}")
        return {n: counts[n] for n in names}
    if len(items) != len(names):
        raise CliError(f"--counts: {len(items)} count(s) given for {len(names)} phenotypes ({listed})")
    return [_count(value, f"count of {name!r}") for value, name in zip(items, names)]


def to_jsonable(obj: Any) -> Any:
    """numpy arrays and scalars -> lists and Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: str, data: Dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the parent folder if needed."""
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(data), f, indent=2)
            f.write("\n")
    except OSError as err:
        raise CliError(f"{path}: cannot write: {err.strerror or err}") from None


def select_columns(table: Table, text: Optional[str], option: str = "--columns") -> Table:
    """The columns ``text`` names (comma-separated header names or 1-based numbers), in that
    order; the whole table when ``text`` is None."""
    if text is None:
        return table
    picked = _positions(table.columns, table.has_header, text, table.path, option)
    return Table(table.values[:, picked], [table.columns[j] for j in picked], table.has_header, table.path)


def write_rows(path: str, header: Sequence[str], rows: np.ndarray, formats: Sequence[str]) -> None:
    """Write ``rows`` as a CSV with ``header``, one format per column, creating the parent folder."""
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                writer.writerow([fmt.format(v) for fmt, v in zip(formats, row)])
    except OSError as err:
        raise CliError(f"{path}: cannot write: {err.strerror or err}") from None

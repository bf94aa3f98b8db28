"""Reading seed files (YAML, JSON, CSV) and bringing their values to column types.

Pure: no database I/O. Errors are :class:`SeedFileError` with the file position
where the parser gives one.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".csv": "csv"}

SeedData = dict[str, list[dict[str, Any]]]


class SeedFileError(ValueError):
    """A seed file that cannot be read, or whose content is not tables of rows."""


def read(path: Path, *, table: str | None = None) -> SeedData:
    """Tables of rows from a YAML, JSON or CSV file (CSV: one table, ``table``
    or the file's name without extension)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SeedFileError(
            f"{path}: unknown format {path.suffix!r} (use .yaml, .yml, .json or .csv)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedFileError(f"{path}: {exc}") from exc
    if kind == "csv":
        return {table or path.stem: _csv(path, text)}
    if table is not None:
        raise SeedFileError("--table applies to CSV files only")
    data = _yaml(path, text) if kind == "yaml" else _json(path, text)
    return _tables(path, data)


def _yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SeedFileError(f"{path}{where}: invalid YAML: {problem}") from exc


def _json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedFileError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc


def _csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise SeedFileError(f"{path}: empty CSV file (the first line names the columns)")
    rows = []
    for row in reader:
        if None in row:  # more cells than header names
            raise SeedFileError(f"{path}:{reader.line_num}: more values than columns")
        # CSV cannot say NULL: an empty cell is NULL
        rows.append({k: (v if v != "" else None) for k, v in row.items()})
    return rows


def _tables(path: Path, data: Any) -> SeedData:
    if not isinstance(data, Mapping):
        raise SeedFileError(f"{path}: expected a mapping of table names to lists of rows")
    out: SeedData = {}
    for name, rows in data.items():
        if not isinstance(name, str):
            raise SeedFileError(f"{path}: table names must be strings, not {name!r}")
        if rows is None:
            rows = []
        if not isinstance(rows, list):
            raise SeedFileError(f"{path}: {name}: expected a list of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or not all(isinstance(k, str) for k in row):
                raise SeedFileError(f"{path}: {name}[{i}]: expected a mapping of column to value")
        out[name] = [dict(r) for r in rows]
    return out


def coerce(table: sa.Table, rows: list[dict[str, Any]], source: str = "") -> list[dict[str, Any]]:
    """Bring text values to their column's type (CSV gives only text; JSON has
    no dates). Unknown columns are left for the seed to report."""
    out = []
    for i, row in enumerate(rows):
        new = {}
        for key, value in row.items():
            col = table.c.get(key)
            new[key] = (
                _coerce(col, value, f"{source}{table.name}[{i}].{key}")
                if col is not None
                else value
            )
        out.append(new)
    return out


def _coerce(col: sa.Column[Any], value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        pytype = col.type.python_type
    except NotImplementedError:
        return value
    try:
        if pytype is str:
            return value
        if pytype is bool:
            lowered = value.strip().lower()
            if lowered in ("true", "t", "yes", "y", "1"):
                return True
            if lowered in ("false", "f", "no", "n", "0"):
                return False
            raise ValueError(value)
        if pytype is dt.datetime:
            return dt.datetime.fromisoformat(value)
        if pytype is dt.date:
            return dt.date.fromisoformat(value)
        if pytype is dt.time:
            return dt.time.fromisoformat(value)
        if pytype in (int, float, decimal.Decimal, uuid.UUID):
            return pytype(value.strip())
    except (ValueError, decimal.InvalidOperation) as exc:
        raise SeedFileError(f"{where}: {value!r} is not a valid {pytype.__name__}") from exc
    return value

"""The runs table as plain data: one row per run (headline score, parameters, latest metrics), short ids, and the
filter, search and sort that the Runs page, its links and ``metalab runs list`` share.

No Streamlit, no TensorFlow, no store: callers pass runs as dicts (a ``RunRecord``'s fields), their evaluations
and their latest metric values (``RunStore.evaluations_by_run`` and ``RunStore.latest_metrics``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

from metalab.core.reports.scores import headline, protocol_label, score_of

__all__ = [
    "QueryError",
    "RUN_FIELDS",
    "RunsTable",
    "Condition",
    "Query",
    "build_row",
    "build_table",
    "flatten_config",
    "key_params",
    "parse_query",
    "resolve_field",
    "search_rows",
    "short_ids",
    "sort_rows",
]

#: The fields every row has, in the order a table shows them first: what tells runs apart and how they scored.
RUN_FIELDS = ("short_id", "name", "score", "ci95", "metric", "protocol", "status", "algorithm", "dataset", "backbone",
              "tags", "notes", "progress", "step", "created", "owner", "id")

#: Algorithm parameters a table shows first when several are present (the knobs meta-learning papers sweep).
_PREFERRED_PARAMS = ("inner_lr", "inner_steps", "meta_batch_size", "outer_lr", "meta_lr", "lr", "first_order",
                     "eval_inner_steps", "temperature", "distance")
#: Episode fields shown for every algorithm.
_EPISODE_PARAMS = ("ways", "shots")
#: Config keys that are already run fields.
_RUN_CONFIG_KEYS = frozenset({"dataset", "algorithm", "backbone"})


class QueryError(ValueError):
    """A filter, sort or column names something that is not a field, or a value that cannot be compared."""


@dataclass
class RunsTable:
    """Rows of runs with the names of their parameter and metric fields (sorted)."""

    rows: list[dict[str, Any]]
    params: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)

    @property
    def fields(self) -> list[str]:
        """Every field a row may have: run fields, then parameters, then metrics."""
        return [*RUN_FIELDS, *self.params, *self.metrics]


def short_ids(ids: Iterable[str], minimum: int = 8) -> dict[str, str]:
    """The shortest prefix of each id that no other id starts with, at least ``minimum`` characters long.

    Give every id in the store, not only those shown: ``metalab runs show PREFIX`` resolves a prefix among all.

    Example:
        >>> short_ids(["20261203-101500-aa11bb", "20261203-101500-ab22cc"])
        {'20261203-101500-aa11bb': '20261203-101500-aa', '20261203-101500-ab22cc': '20261203-101500-ab'}
    """
    ordered = sorted(set(ids))
    out = {}
    for i, run_id in enumerate(ordered):
        need = minimum
        for neighbour in (ordered[i - 1] if i else None, ordered[i + 1] if i + 1 < len(ordered) else None):
            if neighbour is None:
                continue
            common = 0
            for a, b in zip(run_id, neighbour):
                if a != b:
                    break
                common += 1
            need = max(need, common + 1)
        out[run_id] = run_id[:need]
    return out


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run config as flat fields: ``ways``, ``shots``, ... and ``algorithm.inner_lr`` for section parameters.

    The ``*_params`` sections lose their suffix; lists and dicts become their text, so every value is a scalar.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key in _RUN_CONFIG_KEYS:
            continue
        if value.__class__ is dict:
            section = key[:-7] if key.endswith("_params") else key
            for sub, inner in value.items():
                flat[f"{section}.{sub}"] = str(inner) if isinstance(inner, (list, tuple, dict)) else inner
        else:
            flat[key] = str(value) if isinstance(value, (list, tuple, dict)) else value
    return flat


def build_row(run: Mapping[str, Any], evaluations: list[dict[str, Any]], latest: Mapping[str, float],
              short_id: str | None = None) -> tuple[dict[str, Any], list[str], list[str]]:
    """One run's row, with the names of its parameter fields and of its metric fields.

    Args:
        run: Run fields (``id``, ``name``, ``tags``, ``notes``, ``dataset``, ``algorithm``, ``backbone``,
            ``status``, ``step``, ``total_steps``, ``created`` as a timestamp, ``owner``, ``config``).
        evaluations: The run's evaluations, newest first; the headline (canonical protocol) is the score.
        latest: ``{metric: latest value}``.
        short_id: Its short id (:func:`short_ids` over the whole store); the full id when ``None``.

    Returns:
        ``(row, params, metrics)``: the row has :data:`RUN_FIELDS` (``score``, ``ci95``, ``metric`` and
        ``protocol`` are ``None`` without a headline; ``score`` is accuracy in % or MSE), then the flattened config
        and the metrics.
    """
    run_id = run["id"]
    config = run.get("config") or {}
    top = headline(evaluations, config)
    if top is not None:
        metric, value, ci = score_of(top)
        score = {"score": value, "ci95": ci if math.isfinite(ci) else None, "metric": metric,
                 "protocol": protocol_label(top)}
    else:
        score = {"score": None, "ci95": None, "metric": None, "protocol": None}
    total = run.get("total_steps") or 0
    row = {
        "short_id": short_id or run_id, "name": run.get("name") or "", **score,
        "status": run.get("status"), "algorithm": run.get("algorithm"), "dataset": run.get("dataset"),
        "backbone": run.get("backbone"), "tags": list(run.get("tags") or []), "notes": run.get("notes") or "",
        "progress": (run.get("step") or 0) / total if total else None, "step": run.get("step"),
        "created": run.get("created"), "owner": run.get("owner"), "id": run_id,
    }
    params, metrics = [], []
    for key, value in flatten_config(config).items():
        key = key if key not in row else f"config.{key}"
        row[key] = value
        params.append(key)
    for name, value in (latest or {}).items():
        key = name if name not in row else f"metric.{name}"
        row[key] = value
        metrics.append(key)
    return row, params, metrics


def build_table(runs: Iterable[Mapping[str, Any]], evaluations: Mapping[str, list[dict[str, Any]]],
                latest: Mapping[str, Mapping[str, float]], shorts: Mapping[str, str] | None = None) -> RunsTable:
    """One row per run (:func:`build_row`), in the order given.

    Args:
        runs: Run fields, as :func:`build_row` takes them.
        evaluations: ``{run id: evaluations newest first}``.
        latest: ``{run id: {metric: latest value}}``.
        shorts: ``{run id: short id}``; the full id where missing.
    """
    rows: list[dict[str, Any]] = []
    params: set[str] = set()
    metrics: set[str] = set()
    for run in runs:
        row, own_params, own_metrics = build_row(run, evaluations.get(run["id"], []), latest.get(run["id"], {}),
                                                 (shorts or {}).get(run["id"]))
        rows.append(row)
        params.update(own_params)
        metrics.update(own_metrics)
    return RunsTable(rows, sorted(params), sorted(metrics))


def key_params(table: RunsTable, rows: list[dict[str, Any]] | None = None, limit: int = 8) -> list[str]:
    """The parameter columns a table shows by default: ``ways`` and ``shots``, then per algorithm shown, its
    parameters that differ between its runs (the paper's usual knobs first), else its usual knobs, taken from
    each algorithm in turn so that every algorithm shown gets its own.

    Args:
        table: The whole table (for its parameter names).
        rows: The rows shown (default: all).
        limit: At most this many columns.
    """
    rows = table.rows if rows is None else rows
    chosen = [p for p in _EPISODE_PARAMS if p in table.params and any(p in r for r in rows)]
    by_algorithm: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_algorithm.setdefault(str(row.get("algorithm")), []).append(row)

    def rank(name: str) -> tuple[int, str]:
        short = name.split(".", 1)[-1]
        return (_PREFERRED_PARAMS.index(short) if short in _PREFERRED_PARAMS else len(_PREFERRED_PARAMS), name)

    candidates = []
    for members in by_algorithm.values():
        own = sorted({k for r in members for k in r if k.startswith("algorithm.")}, key=rank)
        varying = [k for k in own if len({repr(r.get(k)) for r in members}) > 1]
        usual = [k for k in own if k.split(".", 1)[1] in _PREFERRED_PARAMS]
        candidates.append((varying or usual)[:4])
    for turn in range(4):
        for names in candidates:
            if turn < len(names) and names[turn] not in chosen:
                chosen.append(names[turn])
    # Other sections' parameters that differ between the rows shown (a dataset's or backbone's sweep).
    for name in table.params:
        if name.startswith(("dataset.", "backbone.")) and name not in chosen and \
                len({repr(r.get(name)) for r in rows}) > 1:
            chosen.append(name)
    return chosen[:limit]


def resolve_field(name: str, fields: Iterable[str]) -> str:
    """The field ``name`` means: itself, or the one field it ends (``inner_lr`` -> ``algorithm.inner_lr``).

    Raises:
        QueryError: No field, or several, match (the message names the candidates).
    """
    fields = list(fields)
    aliases = {"id": "id", "ci": "ci95", "±ci": "ci95", "tag": "tags"}
    name = name.strip()
    if name in fields:
        return name
    if name.lower() in aliases and aliases[name.lower()] in fields:
        return aliases[name.lower()]
    matches = [f for f in fields if f.lower().endswith("." + name.lower()) or f.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise QueryError(f"The field {name!r} is ambiguous: it could be {', '.join(matches)}; give the full name. "
                         f"Received: field={name!r}")
    close = [f for f in fields if name.lower() in f.lower()][:5]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise QueryError(f"Unknown field {name!r}{hint}: expected a run field, a parameter such as inner_lr or a metric "
                     f"such as val/accuracy. Received: field={name!r}")


# -- the filter language ------------------------------------------------------------------------------------

#: Comparison operators, longest first so ``>=`` is not read as ``>``.
_OPERATORS = ("!=", ">=", "<=", "==", "=", ">", "<", "~")
_CLAUSE = re.compile(r"^\s*(?P<field>[A-Za-z_±][\w./±-]*)\s*(?P<op>!=|>=|<=|==|=|>|<|~)\s*(?P<value>.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One ``field op value`` clause of a filter."""

    field: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value}"


@dataclass
class Query:
    """A parsed filter: every condition must hold (``and``)."""

    conditions: list[Condition] = field(default_factory=list)

    def apply(self, rows: list[dict[str, Any]], fields: Iterable[str]) -> list[dict[str, Any]]:
        """The rows every condition holds for; a row without the field fails a comparison (but passes ``!=``).

        Raises:
            QueryError: A condition names an unknown field or compares a number field with text by ``<``/``>``.
        """
        fields = list(fields)
        resolved = []
        for condition in self.conditions:
            name = resolve_field(condition.field, fields)
            if name == "created":
                condition = Condition(condition.field, condition.op, _timestamp(condition.value))
            elif condition.op in ("<", "<=", ">", ">=") and _number(condition.value) is None and any(
                    isinstance(r.get(name), (int, float)) and not isinstance(r.get(name), bool) for r in rows):
                raise QueryError(f"The filter {str(condition)!r} orders {name}, a number, by {condition.value!r}, "
                                 f"which is not a number. Received: {name}{condition.op}{condition.value!r}")
            resolved.append((name, condition))
        out = rows
        for name, condition in resolved:
            out = [r for r in out if _holds(r.get(name), condition)]
        return out


def parse_query(text: str | None) -> Query:
    """Parses a filter such as ``inner_lr = 0.01 and score > 80, tags = baseline``.

    Clauses are joined by ``and``, ``&&`` or commas; each is ``FIELD OP VALUE`` with ``OP`` one of
    ``= != > >= < <= ~`` (``~``: contains, ignoring case). ``VALUE`` may be quoted. A list field (``tags``) holds
    for ``=`` when one of its items equals the value.

    Raises:
        QueryError: A clause is not ``FIELD OP VALUE`` (the message quotes it).
    """
    conditions = []
    for clause in re.split(r",|&&|\s+and\s+", text or "", flags=re.IGNORECASE):
        if not clause.strip():
            continue
        found = _CLAUSE.match(clause)
        if not found or not found["value"]:
            raise QueryError(
                f"Cannot read the filter clause {clause.strip()!r}: expected FIELD OP VALUE with OP one of "
                f"{' '.join(_OPERATORS)}, e.g. 'inner_lr = 0.01' or 'score > 80'. Received: filter={text!r}")
        value = found["value"]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        conditions.append(Condition(found["field"], "=" if found["op"] == "==" else found["op"], value))
    return Query(conditions)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _text(value: Any) -> str:
    return str(value).strip().lower()


def _timestamp(value: str) -> str:
    """A date or time (``2026-12-03``, ``2026-12-03T10:00``) as a timestamp, for filters on ``created``."""
    if _number(value) is not None:
        return value
    try:
        return str(datetime.fromisoformat(value.strip()).timestamp())
    except ValueError:
        raise QueryError(f"The filter on created expects a date such as 2026-12-03 or 2026-12-03T10:00. "
                         f"Received: created={value!r}") from None


def _holds(cell: Any, condition: Condition) -> bool:
    op, wanted = condition.op, condition.value
    if isinstance(cell, list):
        if op in ("=", "!="):
            hit = any(_text(item) == _text(wanted) for item in cell)
            return hit if op == "=" else not hit
        if op == "~":
            return any(_text(wanted) in _text(item) for item in cell)
        cell = ", ".join(map(str, cell))
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return op == "!="
    if op == "~":
        return _text(wanted) in _text(cell)
    left, right = _number(cell), _number(wanted)
    if op in ("=", "!="):
        same = (left == right) if left is not None and right is not None else _text(cell) == _text(wanted)
        if isinstance(cell, bool) and right is None:
            same = _text(cell) == _text(wanted)
        return same if op == "=" else not same
    if left is None and right is None:
        left, right = _text(cell), _text(wanted)  # text orders alphabetically
    elif left is None or right is None:
        return False  # a number against text: no order between them
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def search_rows(rows: list[dict[str, Any]], text: str | None) -> list[dict[str, Any]]:
    """Rows where every word of ``text`` appears in some field (id, name, tags, notes, parameters, values)."""
    words = [w.lower() for w in (text or "").split() if w]
    if not words:
        return rows

    def haystack(row: dict[str, Any]) -> str:
        parts = []
        for key, value in row.items():
            if key in ("created", "progress"):
                continue
            parts.append(f"{key}={', '.join(map(str, value)) if isinstance(value, list) else value}")
        return "\n".join(parts).lower()

    return [r for r in rows if all(w in haystack(r) for w in words)]


def sort_rows(rows: list[dict[str, Any]], field_name: str, descending: bool = False) -> list[dict[str, Any]]:
    """Rows sorted by one field: numbers as numbers, text ignoring case; rows without a value always last."""

    def key(row: dict[str, Any]) -> tuple:
        value = row.get(field_name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (1, 0, 0.0, "")
        number = _number(value) if not isinstance(value, (list, str)) else None
        if number is not None:
            return (0, 0, -number if descending else number, "")
        return (0, 1, 0.0, _text(", ".join(value) if isinstance(value, list) else value))

    if descending:
        # Text is reversed by a second, stable pass over the text rows only.
        numeric = sorted((r for r in rows if key(r)[:2] == (0, 0)), key=key)
        text = sorted((r for r in rows if key(r)[:2] == (0, 1)), key=key, reverse=True)
        missing = [r for r in rows if key(r)[0] == 1]
        return numeric + text + missing
    return sorted(rows, key=key)

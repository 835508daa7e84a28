"""Forms generated from a plugin's pydantic JSON schema, and their round trip through query parameters.

``schema_fields`` is pure (a schema in, field descriptions out); ``render_fields`` draws one widget per field
(number inputs with the schema's range, select boxes for ``Literal`` choices, checkboxes for booleans, JSON text
for lists) with the field's description as help. Labels are the schema's titles; where a plugin gave none (pydantic
then makes "Inner Lr" of ``inner_lr``), :func:`human_label` makes one from the name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from metalab.core.contract.params import human_label

_MISSING = object()

#: How an empty (``None``) default reads in tables and help: the field is filled in automatically.
EMPTY_DEFAULT = "empty (automatic)"


def default_text(ff: "FormField") -> str:
    """A field's default as people read it: integers as integers (never ``64.0``), numbers without trailing
    zeros, lists as JSON, and ``None`` as :data:`EMPTY_DEFAULT` (the field's help says what automatic means)."""
    value = ff.default
    if value is None:
        return EMPTY_DEFAULT if ff.nullable or ff.has_default else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (ff.widget == "int" and isinstance(value, float) and value.is_integer()):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


@dataclass
class FormField:
    """One parameter of a schema, as a widget needs it.

    Attributes:
        name: The parameter name.
        label: A human label (the schema's title).
        widget: ``"int"``, ``"float"``, ``"select"``, ``"bool"``, ``"text"`` or ``"json"``.
        default: The schema default (``None`` when there is none).
        minimum, maximum: Inclusive bounds where the schema gives them.
        exclusive_minimum, exclusive_maximum: Exclusive bounds (shown in the help; checked on validation).
        options: Choices of a ``select`` field.
        nullable: The field accepts ``None`` (an empty input).
        has_default: The schema states a default (``default`` may then be ``None``).
        help: The field's description, with its range.
        machine: What the field names on the server (``"data_path"``, ``"download_url"``, ``"checksum"``,
            ``"run_ref"``), or ``None``. Such a field is never filled from a link and is hidden in demo mode.
    """

    name: str
    label: str
    widget: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    options: list[Any] = field(default_factory=list)
    nullable: bool = False
    has_default: bool = False
    help: str = ""
    machine: str | None = None


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return {**schema.get("$defs", {}).get(ref.split("/")[-1], {}), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def schema_fields(schema: dict[str, Any], machine: dict[str, str] | None = None) -> list[FormField]:
    """Describes each property of a pydantic JSON schema as a :class:`FormField`, in declaration order.

    Args:
        schema: ``Model.model_json_schema()``.
        machine: The catalog's ``machine`` map (``{name: kind}``) of parameters that touch the machine; those
            declared with the API's types are found in the schema without it.

    Returns:
        One field per property.
    """
    fields = []
    for name, raw in (schema.get("properties") or {}).items():
        prop = _resolve(schema, raw)
        nullable = False
        if "anyOf" in prop:
            branches = [_resolve(schema, b) for b in prop["anyOf"]]
            nullable = any(b.get("type") == "null" for b in branches)
            concrete = [b for b in branches if b.get("type") != "null"]
            if len(concrete) == 1:
                prop = {**concrete[0], **{k: v for k, v in prop.items() if k != "anyOf"}}
        kind = prop.get("type")
        if "enum" in prop:
            widget = "select"
        elif "const" in prop:
            widget, prop = "select", {**prop, "enum": [prop["const"]]}
        elif kind == "boolean":
            widget = "bool"
        elif kind == "integer":
            widget = "int"
        elif kind == "number":
            widget = "float"
        elif kind == "string":
            widget = "text"
        else:
            widget = "json"
        ff = FormField(
            name=name, label=human_label(name, raw.get("title")), widget=widget,
            default=prop.get("default"), has_default="default" in prop,
            minimum=prop.get("minimum"), maximum=prop.get("maximum"),
            exclusive_minimum=prop.get("exclusiveMinimum"), exclusive_maximum=prop.get("exclusiveMaximum"),
            options=list(prop.get("enum") or []), nullable=nullable,
            machine=(machine or {}).get(name) or raw.get("x-metalab-machine") or prop.get("x-metalab-machine"),
        )
        ff.help = _help(prop.get("description") or "", ff)
        fields.append(ff)
    return fields


def _help(description: str, ff: FormField) -> str:
    bounds = []
    for value, symbol in ((ff.minimum, ">="), (ff.exclusive_minimum, ">"), (ff.maximum, "<="),
                          (ff.exclusive_maximum, "<")):
        if value is not None:
            bounds.append(f"{symbol} {value:g}")
    text = description
    if bounds:
        text += f" (allowed: {', '.join(bounds)})"
    # An empty default's meaning is the description's to say ("empty: the dataset's default"), when it does.
    if ff.has_default and (ff.default is not None or (ff.nullable and "empty" not in description.lower())):
        text += f" Default: {default_text(ff)}."
    return text.strip()


def from_link(ff: FormField, query: dict[str, str], key: str) -> Any:
    """The value a link gives ``ff`` under ``key``, or ``_MISSING``: a field that touches the machine (a path,
    URL, checksum or run) is never taken from a link, whoever sent it.

    Raises:
        ValueError: The link's text does not hold a value of the field's type.
    """
    if ff.machine or key not in query:
        return _MISSING
    return decode(ff, query[key])


def link_params(fields: list[FormField], values: dict[str, Any], defaults: dict[str, Any], prefix: str,
                ) -> dict[str, str]:
    """Query parameters for the values that differ from their defaults, leaving out fields that touch the machine
    (a shared link carries no server path, URL or checksum)."""
    machine = {ff.name for ff in fields if ff.machine}
    return {f"{prefix}{k}": encode(v) for k, v in values.items() if k not in machine and v != defaults.get(k)}


MISSING = _MISSING


def encode(value: Any) -> str:
    """A query-parameter string for a form value (JSON for anything but plain strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def decode(ff: FormField, text: str) -> Any:
    """Reads a query-parameter string back into a value of ``ff``'s type.

    Raises:
        ValueError: The text does not hold a value of that type.
    """
    if ff.widget == "text":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if ff.widget == "select":
        for option in ff.options:
            if option == value or str(option) == text:
                return option
        raise ValueError(f"{ff.name}: expected one of {ff.options}. Received: {ff.name}={text!r}")
    if ff.widget == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{ff.name}: expected true or false. Received: {ff.name}={text!r}")
    if ff.widget == "int":
        if value is None and ff.nullable:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{ff.name}: expected an integer. Received: {ff.name}={text!r}")
    if ff.widget == "float":
        if value is None and ff.nullable:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{ff.name}: expected a number. Received: {ff.name}={text!r}")
    return value


def _within(value: Any, low: Any, high: Any) -> bool:
    """Whether a number widget's value lies within its bounds (an empty value always does)."""
    if not isinstance(value, (int, float)):
        return True
    return (low is None or value >= low) and (high is None or value <= high)


def render_fields(
    fields: list[FormField],
    key_prefix: str,
    initial: Callable[[FormField], Any],
    container: Any = None,
    columns: int = 3,
    hide_machine: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Draws one widget per field and returns the values entered and the errors found before validation.

    Args:
        fields: From :func:`schema_fields`.
        key_prefix: Widget keys are ``f"{key_prefix}.{name}"``; a new prefix gives fresh widgets.
        initial: Returns a field's starting value (used only when its widget has no state yet).
        container: Where to draw (defaults to the main area).
        columns: Widgets per row.
        hide_machine: Draw no widget for fields that touch the machine (demo mode); they keep their
            ``initial`` value (the default, or what this session's own upload set).

    Returns:
        ``(values, errors)``: ``values`` maps names to entered values; ``errors`` lists fields whose text did
        not parse (e.g. malformed JSON).
    """
    container = container or st
    values: dict[str, Any] = {}
    errors: list[str] = []
    if hide_machine:
        for ff in fields:
            if ff.machine:
                values[ff.name] = initial(ff)
        fields = [ff for ff in fields if not ff.machine]
    cols = container.columns(columns) if fields else []
    for i, ff in enumerate(fields):
        key = f"{key_prefix}.{ff.name}"
        col = cols[i % columns]
        if key not in st.session_state:
            start = initial(ff)
            # A value out of range (e.g. from a shared link) stays shown: the widget drops its bounds while it
            # holds it, and the validation below names the field, the rule and the value.
            if ff.widget == "json" or (ff.widget == "text" and not isinstance(start, str)):
                start = "" if start is None else (start if isinstance(start, str) else json.dumps(start))
            if ff.widget == "float" and start is not None:
                start = float(start)
            if ff.widget == "int" and start is not None:
                start = int(start)
            if ff.widget == "select" and start not in ff.options:
                start = ff.options[0] if ff.options else None
            st.session_state[key] = start
        if ff.widget == "select":
            values[ff.name] = col.selectbox(ff.label, ff.options, key=key, help=ff.help, format_func=str)
        elif ff.widget == "bool":
            values[ff.name] = col.checkbox(ff.label, key=key, help=ff.help)
        elif ff.widget == "int":
            low = ff.minimum if ff.minimum is not None else (
                int(ff.exclusive_minimum) + 1 if ff.exclusive_minimum is not None else None)
            bounded = _within(st.session_state[key], low, ff.maximum)
            values[ff.name] = col.number_input(
                ff.label, min_value=None if low is None or not bounded else int(low),
                max_value=None if ff.maximum is None or not bounded else int(ff.maximum), step=1, key=key,
                help=ff.help, **_empty_allowed(ff))
        elif ff.widget == "float":
            bounded = _within(st.session_state[key], ff.minimum, ff.maximum)
            values[ff.name] = col.number_input(
                ff.label, min_value=None if ff.minimum is None or not bounded else float(ff.minimum),
                max_value=None if ff.maximum is None or not bounded else float(ff.maximum), format="%g", key=key,
                help=ff.help, step=_float_step(ff.default), **_empty_allowed(ff))
        elif ff.widget == "text":
            values[ff.name] = col.text_input(ff.label, key=key, help=ff.help)
        else:
            text = col.text_input(ff.label + " (JSON)", key=key, help=ff.help)
            if text.strip() == "":
                if ff.nullable:
                    values[ff.name] = None
                # Otherwise left out: the parameter takes its default.
            else:
                try:
                    values[ff.name] = json.loads(text)
                except ValueError as exc:
                    errors.append(f"{ff.name}: not valid JSON ({exc}). Received: {ff.name}={text!r}")
    return values, errors


def _empty_allowed(ff: FormField) -> dict[str, Any]:
    """A number input that may be left empty (a nullable field: empty means automatic) says so."""
    return {"value": None, "placeholder": "empty: automatic"} if ff.nullable else {}


def _float_step(default: Any) -> float:
    """A step of about a tenth of the default's magnitude (0.001 steps for a 0.01 learning rate)."""
    if isinstance(default, (int, float)) and default:
        import math

        return float(10 ** math.floor(math.log10(abs(default)) - 1))
    return 0.01

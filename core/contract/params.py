"""A plugin's parameter model, read for people: each field's type, range, default and description, and its faults.

Used where a spec is validated (a default outside its own range, a type without a JSON schema) and by
``metalab plugins show``; no TensorFlow, no Keras.
"""

from __future__ import annotations

from typing import Any

import pydantic

__all__ = ["describe_params", "field_range", "params_problem"]

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_SCHEMA_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
_JSON_TYPES = "bool, int, float, str, a Literal of choices, or a list or dict of those"


def field_range(model: type[pydantic.BaseModel], name: str) -> str:
    """The bounds a field declares (``ge``, ``gt``, ``le``, ``lt``) as text, e.g. ``"> 0, <= 10"``; ``""`` if none."""
    info = model.model_fields.get(name)
    if info is None:
        return ""
    bounds = []
    for meta in info.metadata:
        for attr, symbol in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return ", ".join(bounds)


def _schema_problem(model: type[pydantic.BaseModel], owner: str) -> str | None:
    try:
        model.model_json_schema()
        return None
    except Exception as exc:  # noqa: BLE001 - pydantic raises several kinds; any means no form can be drawn
        whole = exc
    config = pydantic.ConfigDict(**model.model_config)  # arbitrary types allowed as in the model itself
    for name, info in model.model_fields.items():
        try:
            pydantic.create_model("Probe", __config__=config, **{name: (info.annotation, info)}).model_json_schema()
        except Exception:  # noqa: BLE001 - this field is the one without a schema
            plain = isinstance(info.annotation, type)
            annotation = info.annotation.__name__ if plain else repr(info.annotation)
            return (
                f"{owner}: parameter {name!r} has a type with no JSON schema, so the CLI and the dashboard cannot "
                f"show or set it (the dashboard draws its forms from the schema); give it a JSON type ({_JSON_TYPES}) "
                f"and build the object from it inside the factory. Received: {name}: {annotation}"
            )
    first = str(whole).splitlines()[0] if str(whole) else type(whole).__name__
    return f"{owner}: its parameter model has no JSON schema ({first}). Received: params={model.__name__}"


def params_problem(model: type[pydantic.BaseModel], owner: str) -> str | None:
    """What is wrong with a spec's parameter model, as one message, or ``None``.

    Checked when the plugin loads, so that a faulty model fails its plugin there and not later in a worker: every
    field needs a default that passes its own declared range and type (pydantic does not check defaults itself),
    and the model needs a JSON schema (the dashboard's forms and ``metalab plugins show`` are drawn from it).

    Args:
        model: The spec's ``params`` class.
        owner: How messages name the spec, e.g. ``"AlgorithmSpec 'metalab_foo.foo'"``.
    """
    try:
        defaults = model()
    except pydantic.ValidationError as exc:
        missing = [str(err["loc"][0]) for err in exc.errors() if err["type"] == "missing" and err["loc"]]
        if missing:
            return (f"{owner}: every parameter needs a default (the paper's); {', '.join(map(repr, missing))} has "
                    f"none. Received: {missing[0]}=<no default>")
        return f"{owner}: every parameter needs a valid default. {exc}"
    values = {name: getattr(defaults, name) for name in model.model_fields}
    try:
        model.model_validate(values)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            allowed = field_range(model, name)
            where = f"allowed: {allowed}" if allowed else err["msg"]
            lines.append(
                f"{owner}: the default of parameter {name!r} is outside its own range ({where}); "
                f"fix the default or the range. Received: {name}={values.get(name)!r}"
            )
        return "\n".join(lines)
    return _schema_problem(model, owner)


def _schema_type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "const" in schema:
        return f"always {schema['const']}"
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return " or ".join(_schema_type(option) for option in options)
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"dict of {_schema_type(schema['additionalProperties'])}"
    return {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}.get(kind, kind)


def _schema_range(schema: dict[str, Any]) -> str:
    parts = [f"{symbol} {schema[key]}" for key, symbol in _SCHEMA_BOUNDS if key in schema]
    for option in schema.get("anyOf") or []:
        inner = _schema_range(option)
        if inner:
            parts.append(inner)
    items = schema.get("items")
    if isinstance(items, dict) and _schema_range(items):
        parts.append(f"each {_schema_range(items)}")
    for key, label in (("minItems", "at least"), ("maxItems", "at most")):
        if key in schema:
            parts.append(f"{label} {schema[key]} items")
    return ", ".join(parts)


#: Words of parameter names spelled out or capitalised in labels (``inner_lr`` reads "Inner learning rate").
_WORDS = {
    "lr": "learning rate", "bn": "batch-norm", "val": "validation", "eval": "evaluation", "num": "number of",
    "dim": "dimension", "dims": "dimensions", "std": "std. dev.", "init": "initial", "max": "maximum",
    "min": "minimum", "ci95": "95% CI", "id": "ID", "url": "URL", "sha256": "SHA-256", "jit": "JIT", "xla": "XLA",
    "mse": "MSE", "gpu": "GPU", "cpu": "CPU", "mlp": "MLP", "cnn": "CNN", "pca": "PCA", "fce": "FCE", "cub": "CUB",
    "rgb": "RGB", "sgd": "SGD", "kl": "KL", "tf": "TensorFlow",
}


def human_label(name: str, title: str | None = None) -> str:
    """A field's label: its schema title, unless that is only pydantic's automatic one (``"Inner Lr"`` for
    ``inner_lr``), in which case a sentence-case label made from the name (``"Inner learning rate"``).

    Args:
        name: The parameter name.
        title: The schema's ``title``, if any.

    Returns:
        The label to show.
    """
    automatic = {name.replace("_", " ").title(), name.title().replace("_", " ")}
    if title and title not in automatic:
        return title
    words = [_WORDS.get(word.lower(), word) for word in name.split("_") if word]
    text = " ".join(words) or name
    return text[:1].upper() + text[1:]



def describe_params(model: type[pydantic.BaseModel]) -> list[dict[str, Any]]:
    """One row per parameter, for people: ``name``, ``type``, ``range``, ``default``, ``title`` (:func:`human_label`),
    ``description``.

    Read from the model's JSON schema (what the dashboard draws too); defaults made by a default factory are filled
    in, and a parameter without bounds has ``range`` ``""``.
    """
    schema = model.model_json_schema()
    properties = schema.get("properties", {})
    defaults = model().model_dump(mode="json")
    rows = []
    for name in model.model_fields:
        prop = properties.get(name, {})
        rows.append({
            "name": name,
            "type": _schema_type(prop),
            "range": _schema_range(prop),
            "default": defaults.get(name),
            # People's label: a plugin's own title, else one made from the name (never pydantic's "Inner Lr").
            "title": human_label(name, prop.get("title")),
            "description": prop.get("description", ""),
        })
    return rows

"""One validator for every chdl config file: strict pydantic models, YAML loading, one-line errors.

The camera config (acquisition.camera_config), the curation config (curation.config) and the training
config (diffuma.training.config) are pydantic v2 models derived from :class:`StrictConfig`, loaded with
:func:`load_yaml` and validated with :func:`validate`, so all three follow the same rules:

* no silent coercion: ``2.9`` is not an int, ``true`` is not a number, ``"5"`` is not an int (pydantic
  strict mode); an int where a float is expected is exact and accepted; a YAML list is accepted where a
  tuple is expected (:data:`YamlTuple`; YAML has no tuples);
* NaN and infinities are refused in every float (``allow_inf_nan=False``): config numbers are physical;
* unknown keys are errors, with a did-you-mean suggestion (difflib) or the list of known keys;
* every error is ONE line: ``<file>: <dotted.key>: <problem>``, e.g.
  ``train.yaml: run.lr: must be a finite number, got nan``; a value that came from a command-line
  option (``--set run.lr=abc``) is blamed on that option, not on the file.

Why here: acquisition is the first stage and a stage imports only from stages before it, so the one
module that all three config families share must live in acquisition (curation and diffuma may import
it; ``chdl/`` may not be imported by acquisition). It depends on nothing but pydantic and PyYAML.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Strict, ValidationError

__all__ = ["ConfigError", "StrictConfig", "STRICT", "Int", "Float", "YamlTuple", "load_yaml", "validate",
           "unknown_key", "did_you_mean"]


class ConfigError(ValueError):
    """A config problem, as one line naming the file (or the option) and the dotted key."""


# strict: no coercion; forbid: unknown keys are errors; no NaN/inf; defaults are trusted (not re-validated).
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_assignment=True)


class StrictConfig(BaseModel):
    """Base of every config model: strict types, no unknown keys, finite floats, validated assignment."""

    model_config = STRICT

    def to_dict(self) -> dict:
        """Plain dict of every field (nested models as dicts, tuples as lists): YAML/JSON-ready."""
        return self.model_dump(mode="json")


Int = Annotated[int, Strict()]  # strict item types for use inside YamlTuple
Float = Annotated[float, Strict()]


class _YamlTuple:
    """``YamlTuple[Int, ...]`` / ``YamlTuple[Float, Float]``: a tuple field that also accepts a YAML list.

    Only the container is lax (list -> tuple); give strict item types (:data:`Int`, :data:`Float`)."""

    def __class_getitem__(cls, items):
        items = items if isinstance(items, tuple) else (items,)
        return Annotated[tuple[items], Strict(False)]


YamlTuple = _YamlTuple


# PyYAML implements YAML 1.1, where `1e-3` (no dot) is a string, `010` is octal 8 and `1:00` is base-60 60;
# YAML 1.2 and every user read the first as a number and would not expect the other two. This loader reads
# numbers as YAML 1.2 does (decimal and 0x integers, floats with or without a dot; `010` and `1:00` stay
# strings, which the schemas then refuse by name), and refuses a key given twice in one mapping (YAML forbids
# it; PyYAML would keep the last value silently, so `{preset: tiny, preset: small}` trained `small` without a
# word); everything else is yaml.SafeLoader (no code runs from YAML).
class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # a merge key (<<: *anchor) may be followed by keys that override the anchor's
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str, source: str, error: type[Exception] = ConfigError) -> Any:
    """Parse YAML ``text`` (safe loader, YAML 1.2 floats); ``error`` naming ``source`` if it is malformed."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error(f"{source}: malformed YAML ({problem or str(e).splitlines()[0]}{where})") from None


def did_you_mean(key: str, known) -> str:
    """`` (did you mean 'epochs'?)`` for the closest known name, else `` (known: a, b, c)``."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(key), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"


def unknown_key(dotted: str, key: str, known) -> str:
    """``run.epocs: unknown key (did you mean 'epochs'?)``."""
    return f"{dotted}: unknown key{did_you_mean(key, known)}"


def validate(model: type[BaseModel], data: Any, source: str, *, prefix: tuple = (),
             blame: dict[tuple, str] | None = None, error: type[Exception] = ConfigError):
    """``model`` validated from ``data``; else ``error`` with one line ``<source>: <dotted key>: <problem>``.

    ``prefix``: the keys above ``data`` in the file (for the dotted key of a sub-section validated alone).
    ``blame``: dotted-key tuples (from the top of the file, ``prefix`` included) that came from command-line
    options, mapped to the option's text (e.g. ``{("run", "lr"): "--set run.lr=abc"}``); an error under one of them names the option
    instead of ``source``. ``source`` may be "" (then the line starts with the key).
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(error_line(e, model, source, prefix=prefix, blame=blame)) from None


def error_line(exc: ValidationError, model: type[BaseModel], source: str, *, prefix: tuple = (),
               blame: dict[tuple, str] | None = None) -> str:
    """The first error of ``exc`` as ``<source or blamed option>: <dotted key>: <problem>``."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    if err["type"] == "missing" and loc and isinstance(loc[-1], int) and isinstance(err.get("input"), (list, tuple)):
        # a list too short for a fixed-length field (betas: [0.9]) said "run.betas.1: is required"
        loc, err = loc[:-1], {**err, "type": "too_short_list"}
    for key, option in (blame or {}).items():
        if (prefix + loc)[:len(key)] == tuple(key):
            source = option
            break
    dotted = ".".join(str(p) for p in prefix + loc)
    if err["type"] == "extra_forbidden":
        text = unknown_key(dotted, loc[-1], _fields_at(model, loc[:-1]))
    else:
        problem = _problem(err)
        # a model's own check names the field it is about first ("test_fraction: ..."): one dotted key, not two parts
        field = problem.split(": ", 1)[0] if err["type"] == "value_error" and ": " in problem else None
        if field is not None and field in _fields_at(model, loc):
            dotted, problem = ".".join(filter(None, (dotted, field))), problem.split(": ", 1)[1]
        text = f"{dotted}: {problem}" if dotted else problem
    return f"{source}: {text}" if source else text


_TYPE_WORDS = {
    "int_type": "must be an integer", "float_type": "must be a number", "bool_type": "must be true or false",
    "string_type": "must be a string", "dict_type": "must be a mapping", "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping", "dataclass_type": "must be a mapping",
    "list_type": "must be a list", "tuple_type": "must be a list", "finite_number": "must be a finite number",
}


def _problem(err: dict) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {value!r}"
    if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        # (the number is not what was written: YAML reads 1e3 as 1000.0 and 1_000 as 1000; no quoted suggestion from it)
        return (f"must be a string, got the number {value!r} (YAML reads unquoted digits as a number: put the value "
                "in quotes exactly as written, e.g. serial: \"0012\")")
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind] + got
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        ctx = {k: (f"{v:g}" if isinstance(v, float) else v) for k, v in ctx.items()}  # 1.0 -> 1
        return "must be " + bounds[kind].format(**ctx) + got
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}{got}"
    if kind == "missing":
        return "is required"
    if kind == "too_short_list":
        return f"has too few items ({len(value)}){got}"
    if kind in ("too_short", "too_long"):
        return f"must have {ctx.get('min_length', ctx.get('max_length'))} items{got}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = err["msg"]
    return msg[:1].lower() + msg[1:] + got


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (sub)model found by following ``loc`` from ``model`` (for did-you-mean)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return []
        current = _unwrap(current)
    current = _unwrap(current)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _unwrap(tp):
    """``X | None`` and ``Annotated[X, ...]`` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp

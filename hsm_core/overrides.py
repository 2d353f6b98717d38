"""How a sweep value is written for the program that receives it.

Two journeys, both without any shell on the way:

* ``script:`` sweeps pass each parameter as one Hydra override argument ``key=value``.
  :func:`format_override` writes the value so that Hydra's override grammar, and then
  OmegaConf, give the task back exactly the value (and type) of the sweep file.
* ``command:`` sweeps put values into argv elements through ``{param}`` placeholders
  (:class:`Template`): ``str(value)`` for scalars, JSON for lists and dicts.

Two layers interpret an override string, and both are escaped for:

1. Hydra's lexer: anything that is not a plain identifier is single- or double-quoted;
   inside quotes only backslashes that precede a quote (or the closing quote) are special.
2. OmegaConf: a string value containing ``${`` is an interpolation, resolved when the app
   reads it (``${oc.env:HOME}`` would become the task's home directory). Sweep values are
   data, so every ``${`` is escaped (``\\${``) and the app reads the literal text. The
   price: an app that reads its config *unresolved* (``to_container(resolve=False)``)
   sees the escape. OmegaConf's ``???`` (a mandatory value that is missing) has no escape
   at all, so it is refused.

Dict values are merged by Hydra into a dict already at that key (Hydra's rule for
``key={...}``), like any other dict override.

>>> format_override("model.lr", 1e-3)
'model.lr=0.001'
>>> format_override("name", "run 1, 'best'")
'name="run 1, \\'best\\'"'
>>> format_override("tags", ["a", 1, None])
'tags=[a,1,null]'
>>> Template("--lr={model.lr}").render({"model.lr": 0.5})
'--lr=0.5'
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Collection, Mapping
from typing import Any

from hsm_core.errors import ConfigError

__all__ = [
    "Template",
    "TemplateError",
    "UnrepresentableValue",
    "check_value",
    "format_override",
    "format_value",
    "is_hydra_key",
    "parse_command",
    "placeholder_text",
]


class UnrepresentableValue(ValueError):
    """A value that cannot travel as a Hydra override; the message says why."""


# --- Hydra's override lexer (hydra/grammar/OverrideLexer.g4), as regular expressions ---
_ID = r"[A-Za-z_][A-Za-z0-9_-]*"
_KEY_SPECIAL = r"[A-Za-z_$][A-Za-z0-9_$-]*"
_UINT = r"(?:0|[1-9](?:_?[0-9])*)"
_DIGITS = r"[0-9](?:_?[0-9])*"
_POINT = rf"(?:{_UINT}\.|(?:{_UINT})?\.{_DIGITS})"
_FLOAT = rf"[+-]?(?:{_POINT}|(?:{_UINT}|{_POINT})[eE][+-]?{_DIGITS}|[Ii][Nn][Ff]|[Nn][Aa][Nn])"
_SEGMENT = rf"(?:{_KEY_SPECIAL}|{_UINT})"
_PACKAGE = rf"(?:{_KEY_SPECIAL}|{_SEGMENT}(?:\.{_SEGMENT})+)"
_KEY_RE = re.compile(rf"(?:\+\+?)?(?:{_PACKAGE}|{_ID}(?:/{_ID})+)(?:@{_PACKAGE})?\Z")
_BARE_RE = re.compile(rf"{_ID}\Z")
# Words the lexer reads as BOOL / NULL / FLOAT although they also fit ID (ties go to the
# rule defined first in the grammar, and those come before ID).
_KEYWORDS = frozenset({"true", "false", "null", "inf", "nan"})
# A dict key made of one of these tokens alone comes back as int/float/bool/None, not str.
_NON_STR_KEY_RE = re.compile(rf"(?:[+-]?{_UINT}|{_FLOAT}|true|false|null)\Z", re.IGNORECASE)
_KEY_ESCAPED = frozenset("\\()[]{}:=, \t")  # the lexer's ESC set: written with a backslash
_KEY_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/+.$%*@?|")
_INTERP_RE = re.compile(r"(\\*)\$\{")


def is_hydra_key(key: str) -> bool:
    """True when ``key`` is a key of Hydra's override grammar (``a.b``, ``+x``, ``db/x@y``)."""
    return bool(_KEY_RE.match(key))


def format_override(key: str, value: Any) -> str:
    """``key=value`` for Hydra; raises ConfigError (naming the key) for what cannot travel."""
    if not is_hydra_key(key):
        raise ConfigError(
            "not a Hydra override key",
            key=key,
            hint="use dotted names of letters, digits, _ and - (a.b_c), optionally +a.b",
        )
    try:
        return f"{key}={format_value(value)}"
    except UnrepresentableValue as err:
        raise ConfigError(str(err), key=key) from None


def check_value(value: Any) -> None:
    """Sweep values are JSON-like data: str, int, float, bool, None, lists, str-keyed dicts
    (what YAML gives, what task_key hashes, what argv and JSON can carry)."""
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if "\0" in value:
            raise UnrepresentableValue("values cannot hold a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UnrepresentableValue(f"{value!r} is not valid Unicode text")
    elif isinstance(value, list):
        for v in value:
            check_value(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UnrepresentableValue(f"keys of a map value must be strings, got {k!r}")
            check_value(v)
    else:
        raise UnrepresentableValue(f"unsupported value type {type(value).__name__}: {value!r}")


def format_value(value: Any) -> str:
    """The override-grammar text of ``value``; raises UnrepresentableValue."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest text that float() reads back to the same number
    if isinstance(value, str):
        return _format_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_format_dict_key(k)}:{format_value(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    raise UnrepresentableValue(f"values of type {type(value).__name__} cannot be overrides")


def _format_str(text: str) -> str:
    if text == "???":
        raise UnrepresentableValue("'???' means a missing value to OmegaConf and cannot be sent")
    if _BARE_RE.match(text) and text.lower() not in _KEYWORDS:
        return text
    if "${" in text:
        # OmegaConf: n backslashes before "${" are written 2n, then "\${" (literal "${").
        text = _INTERP_RE.sub(lambda m: m.group(1) * 2 + "\\${", text)
    quote = '"' if "'" in text and '"' not in text else "'"
    # Hydra: inside quotes, a run of backslashes is special only before a quote or the
    # closing quote; such runs are doubled and the quote itself gets one backslash.
    body = re.sub(
        rf"(\\*)({quote}|\Z)", lambda m: m.group(1) * 2 + ("\\" + quote if m.group(2) else ""), text
    )
    return quote + body + quote


def _format_dict_key(key: Any) -> str:
    # Dict keys cannot be quoted in Hydra's grammar, and one INT/FLOAT/BOOL/NULL token
    # alone would come back as a number, bool or None: only such keys are refused.
    if not isinstance(key, str) or not key:
        raise UnrepresentableValue(f"dict key {key!r} must be a non-empty string")
    if _NON_STR_KEY_RE.match(key):
        raise UnrepresentableValue(f"dict key {key!r} would reach the task as a non-string")
    out = []
    for ch in key:
        if ch in _KEY_ESCAPED:
            out.append("\\" + ch)
        elif ch in _KEY_PLAIN:
            out.append(ch)
        else:
            raise UnrepresentableValue(
                f"dict key {key!r}: Hydra overrides cannot carry {ch!r} in a dict key"
            )
    return "".join(out)  # "{" is escaped, so "${" cannot start an interpolation token


# --- command: templates ------------------------------------------------------------------

_PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def placeholder_text(value: Any) -> str:
    """The text a placeholder becomes: ``str(value)`` for scalars, JSON for lists/dicts."""
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


class Template:
    """One argv element (or env value) with ``{param}`` placeholders; ``{{``/``}}`` are
    literal braces. The result is always exactly one string: never split, never a shell."""

    __slots__ = ("names", "parts", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str] = []  # even positions literal text, odd positions param names
        literal: list[str] = []
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(text):
            literal.append(text[pos : m.start()])
            pos = m.end()
            if m.group(1) is None:
                literal.append(m.group(0)[0])
                continue
            self.parts += ["".join(literal), m.group(1)]
            literal = []
        literal.append(text[pos:])
        self.parts.append("".join(literal))
        self.names = tuple(self.parts[1::2])

    @classmethod
    def checked(cls, text: str, params: Collection[str]) -> Template:
        """A template whose every placeholder names one of ``params``."""
        template = cls(text)
        for name in template.names:
            if name not in params:
                raise TemplateError(
                    f"unknown placeholder {{{name}}}; the sweep's params are: "
                    + (", ".join(params) or "(none)"),
                    "write {{ and }} for literal braces",
                )
        return template

    def render(self, params: Mapping[str, Any]) -> str:
        if not self.names:
            return self.parts[0]
        parts = self.parts[:]
        for i in range(1, len(parts), 2):
            parts[i] = placeholder_text(params[parts[i]])
        return "".join(parts)


class TemplateError(ValueError):
    """A bad ``command:`` template; ``index`` is the argv element at fault, if one is."""

    def __init__(self, message: str, hint: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.index = index


def parse_command(command: Any, params: Collection[str]) -> tuple[str, ...]:
    """A ``command:`` as argv templates: a list as is, a string split once with shlex here
    (values are substituted later, per element, and never split or shell-evaluated)."""
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as err:
            raise TemplateError(f"cannot split the command: {err}", "or give it as a list")
    if not isinstance(command, list) or not command:
        raise TemplateError("must be a non-empty list of arguments or a command string")
    for i, part in enumerate(command):
        try:
            if isinstance(part, bool) or not isinstance(part, (str, int, float)):
                raise TemplateError("arguments must be strings or numbers")
            if "\0" in str(part):
                raise TemplateError("arguments cannot hold a NUL character")
            Template.checked(str(part), params)
        except TemplateError as err:
            err.index = i
            raise
    return tuple(str(part) for part in command)

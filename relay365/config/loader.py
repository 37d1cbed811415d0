"""Typed loading of YAML into frozen dataclasses, with the line of every problem.

Theory of operation: the YAML text is composed into nodes (which carry their line numbers) and the
nodes are converted field by field into the dataclasses of `relay365.config.model`, driven by their
type hints.
Every problem is collected as `path: message (line N)` - `accounts[0].app: ... (line 23)` - so one
run of `relay365 check` shows them all. Unknown keys are errors (a typo must not silently fall back to a
default), and so are duplicate keys, which YAML itself would quietly let the last one win.

`${NAME}` in any string is replaced from the environment (`${NAME:-default}` gives a default); a
`Secret` field also takes `{file: PATH}`, which reads the file (systemd credentials, Docker secrets).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, cast

import yaml

from ..errors import ConfigError
from ..secret import Secret

_FAIL = object()
T = TypeVar("T")
Meta = Mapping[str, Any]
"""A field's metadata: `parse` (str -> value) and `expects` (what the error message calls it)."""
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SCALAR_TAGS = {
    "tag:yaml.org,2002:str": str, "tag:yaml.org,2002:int": int, "tag:yaml.org,2002:bool": bool,
    "tag:yaml.org,2002:float": float, "tag:yaml.org,2002:null": type(None),
}


def field_parser(fn: Callable[[str], Any], expects: str = "string") -> dict[str, Any]:
    """Field metadata: parse the (env-expanded) string with `fn`, which raises ValueError(msg).
    `expects` names the kind of value in the message for a list or mapping given instead."""
    return {"parse": fn, "expects": expects}


class Loader:
    """Converts one YAML document into a dataclass tree; collects problems and key lines."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.lines: dict[str, int] = {}

    def error(self, path: str, message: str, node: yaml.Node | None) -> None:
        where = f" (line {node.start_mark.line + 1})" if node is not None else ""
        self.problems.append(f"{path or '<top>'}: {message}{where}")

    def line(self, path: str) -> int | None:
        return self.lines.get(path)

    def load(self, text: str, root_type: type[T]) -> T:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"not valid YAML: {problem}{where}"], self.source) from None
        if node is None:  # empty, or only comments: an empty mapping at line 1
            node = yaml.compose("{}", Loader=yaml.SafeLoader)
        assert node is not None
        value = self.convert(root_type, node, "")
        if self.problems:
            raise ConfigError(self.problems, self.source)
        return cast(T, value)

    # -- conversion, driven by type hints -------------------------------------------------------

    def convert(self, tp: Any, node: yaml.Node, path: str, meta: Meta | None = None) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if self._is_null(node) and len(args) < len(typing.get_args(tp)):  # only X | None
                return None
            tp, origin = args[0], typing.get_origin(args[0])
        if origin is list and meta and "parse" in meta:  # a list of parsed strings
            return self.sequence(str, node, path, meta)
        if meta and "parse" in meta:
            raw = self.scalar(str, node, path, expects=meta.get("expects"))
            if raw is _FAIL:
                return _FAIL
            try:
                return meta["parse"](raw)
            except ValueError as exc:
                self.error(path, str(exc), node)
                return _FAIL
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, node, path)
        if origin is list:
            return self.sequence(typing.get_args(tp)[0], node, path)
        if origin is dict:
            return self.mapping(typing.get_args(tp)[1], node, path)
        if origin is Literal:
            return self.choice(typing.get_args(tp), node, path)
        if tp is Secret:
            return self.secret(node, path)
        if tp is Path:
            raw = self.scalar(str, node, path)
            return raw if raw is _FAIL else Path(raw)
        return self.scalar(tp, node, path)

    @staticmethod
    def _is_null(node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"

    def dataclass(self, tp: Any, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.error(path, "expected a mapping of keys", node)
            return _FAIL
        fields = {f.name: f for f in dataclasses.fields(tp)
                  if f.init and not f.metadata.get("internal")}  # e.g. Config.source: set by us
        hints = typing.get_type_hints(tp)
        values: dict[str, Any] = {}
        value_nodes: dict[str, yaml.Node] = {}
        failed = False
        for key, value_node in self._pairs(node, path):
            value_nodes[key] = value_node
            sub = f"{path}.{key}" if path else key
            if key not in fields:
                self.error(sub, f"unknown key{_suggest(key, fields)}", value_node)
                failed = True
                continue
            value = self.convert(hints[key], value_node, sub, dict(fields[key].metadata))
            if value is _FAIL:
                failed = True
            else:
                values[key] = value
        for name, f in fields.items():
            if name not in values and _required(f) and not failed:
                self.error(f"{path}.{name}" if path else name, "missing (required)", node)
                failed = True
        if failed:
            return _FAIL
        try:
            return tp(**values)
        except ValueError as exc:  # a dataclass's own __post_init__ check
            name, sep, rest = str(exc).partition(": ")
            if sep and name in value_nodes:  # "field: problem" -> the field's path and line
                self.error(f"{path}.{name}" if path else name, rest, value_nodes[name])
            else:
                self.error(path, str(exc), node)
            return _FAIL

    def _pairs(self, node: yaml.MappingNode, path: str) -> Iterator[tuple[str, yaml.Node]]:
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(path, "keys must be plain strings", key_node)
                continue
            if key in seen:
                self.error(f"{path}.{key}" if path else key, "duplicate key", key_node)
                continue
            seen.add(key)
            yield key, value_node

    def sequence(self, item_tp: Any, node: yaml.Node, path: str, meta: Meta | None = None) -> Any:
        if isinstance(node, yaml.ScalarNode) and item_tp is str and not self._is_null(node):
            node = yaml.SequenceNode("tag:yaml.org,2002:seq", [node], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.SequenceNode):
            self.error(path, "expected a list", node)
            return _FAIL
        items = [self.convert(item_tp, n, f"{path}[{i}]", meta) for i, n in enumerate(node.value)]
        return _FAIL if any(i is _FAIL for i in items) else items

    def mapping(self, value_tp: Any, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.error(path, "expected a mapping", node)
            return _FAIL
        out = {k: self.convert(value_tp, v, f"{path}.{k}") for k, v in self._pairs(node, path)}
        return _FAIL if any(v is _FAIL for v in out.values()) else out

    def choice(self, options: tuple[Any, ...], node: yaml.Node, path: str) -> Any:
        value = self.scalar(type(options[0]), node, path)
        if value is not _FAIL and value not in options:
            self.error(path, f"must be one of {', '.join(map(str, options))}, not {value!r}", node)
            return _FAIL
        return value

    def secret(self, node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            pairs = dict(self._pairs(node, path))
            if set(pairs) != {"file"} or not isinstance(pairs["file"], yaml.ScalarNode):
                self.error(path, "a secret is a string, ${ENV} or {file: PATH}", node)
                return _FAIL
            file = self.expand(pairs["file"].value, path, node)
            if file is _FAIL:
                return _FAIL
            try:
                return Secret(Path(file).read_text().strip())
            except OSError as exc:
                self.error(path, f"cannot read secret file {file}: {exc.strerror}", node)
                return _FAIL
            except UnicodeDecodeError:
                self.error(path, f"secret file {file} is not UTF-8 text", node)
                return _FAIL
        value = self.scalar(str, node, path)
        return value if value is _FAIL else Secret(value)

    def scalar(self, tp: type, node: yaml.Node, path: str, expects: str | None = None) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            self.error(path, f"expected a {expects or _name(tp)}, not a {kind}", node)
            return _FAIL
        actual = _SCALAR_TAGS.get(node.tag, str)
        if tp is str:
            if actual is type(None):
                self.error(path, "expected a string, not null", node)
                return _FAIL
            return self.expand(node.value, path, node)
        value = _CONSTRUCTOR.construct_object(node) if actual is not str else node.value
        if actual is str and "${" in node.value:  # a number or flag from the environment
            expanded = self.expand(node.value, path, node)
            if expanded is _FAIL:
                return _FAIL
            try:
                value = yaml.safe_load(expanded) if expanded else None
            except yaml.YAMLError:  # e.g. "[1" or a !!tag: not a number or a flag either
                value = expanded
            actual = type(value)
        if tp is float and actual is int:
            return float(value)
        if actual is not tp:
            self.error(path, f"expected {_name(tp)}, not {node.value!r}", node)
            return _FAIL
        return value

    def expand(self, raw: str, path: str, node: yaml.Node) -> Any:
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            missing.append(m.group(1))
            return ""

        out = _ENV.sub(sub, raw)
        if missing:
            self.error(path, f"environment variable {missing[0]} is not set", node)
            return _FAIL
        return out


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _name(tp: type) -> str:
    return {str: "string", int: "integer", bool: "true or false", float: "number"}.get(tp, tp.__name__)


def _suggest(key: str, fields: Mapping[str, object]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(sorted(fields))})"

"""Messages against the JSON Schemas (``bixweb/schemas``), at a cost bounded by the frame's size.

An inbound frame is checked in steps that each stop early: its count of
values is read off the text at C speed before anything is built from it
(:func:`count_values`), its nesting off the parsed value level by level
(:func:`nesting`), then a compiled validator
(``jsonschema_rs``) takes the parsed object and stops at the first error.
``jsonschema`` stays for listing every error of a message
(:meth:`SchemaSet.errors`: outbound checks under ``--strict``, and tests),
where thoroughness matters more than speed.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jsonschema_rs
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from bixweb import assets
from bixweb.errors import InstallError

Direction = Literal["server", "client", "ui"]

MAX_NESTING: Final = 16
"""No message of the protocol nests deeper; deeper input is refused before validation (whose
converter would recurse as deep as it goes)."""

MAX_VALUES: Final = 1_500
"""No message of the protocol holds more values and containers: the largest, a ``subscribe`` at
its schema's bounds (200 symbols, 16 channels, 1,000 ``since.seq`` entries), holds about 1,230.
More are refused before parsing, so neither the parser nor the validator works through them
(``tests/test_cost.py`` checks that the largest valid message stays under it)."""

MAX_REASON_CHARS: Final = 200
MAX_PATH_CHARS: Final = 200

_PLAIN_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def count_values(text: str) -> int:
    """About how many values and containers a JSON text holds, read without parsing it, for the
    comparison with :data:`MAX_VALUES`.

    Commas and opening brackets outside strings: at least the number of
    values, at most one more. Counted first with strings included (one C
    pass each: an upper bound); only a text whose upper bound is over
    :data:`MAX_VALUES` is counted again without its strings (replace, split,
    count: still C speed, so an 8,000-element array costs what its bytes
    cost, not 8,000 Python steps). For text that is not JSON the figure means
    little; the parser refuses it.
    """
    openers = text.count("[") + text.count("{")
    upper = text.count(",") + openers  # strings included: never fewer than the exact count
    if upper <= MAX_VALUES:
        return upper  # the common case: no need to tell strings apart
    if "\\" in text:  # escapes pair left to right, so after these no quote inside a string is escaped
        text = text.replace("\\\\", "").replace('\\"', "")
    skeleton = "".join(text.split('"')[::2])  # strings dropped: what is left is structure and scalars
    return skeleton.count(",") + skeleton.count("[") + skeleton.count("{")


def nesting(value: object, limit: int = MAX_NESTING + 1) -> int:
    """How deeply ``value`` nests lists and objects, counted up to ``limit``.

    Level by level, so a deep chain costs ``limit`` steps; a wide value
    costs one step per element, which :func:`count_values` bounded first.
    """
    depth = 0
    level: list[object] = [value]
    while level and depth < limit:
        children: list[object] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(item.values())
            elif isinstance(item, list):
                children.extend(item)
        if not children:
            break
        depth += 1
        level = children
    return depth


def json_path(path: Sequence[str | int]) -> str:
    """``["symbols", 3]`` → ``$.symbols[3]``; keys that are not plain names are quoted; capped in length."""
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += "." + part
        else:
            out += "['" + part[:64].replace("\\", "\\\\").replace("'", "\\'") + "']"
        if len(out) > MAX_PATH_CHARS:
            return out[:MAX_PATH_CHARS]
    return out


@dataclass(frozen=True)
class SchemaSet:
    """Every schema file, with validators per message type and direction."""

    files: Mapping[str, dict[str, Any]]
    """Path under ``bixweb/schemas`` (``"server/trade.json"``) to the parsed schema."""
    validators: Mapping[Direction, Mapping[str, Draft202012Validator]]
    """``jsonschema`` validators: every error, each with its context (slow)."""
    fast: Mapping[Direction, Mapping[str, jsonschema_rs.Validator]]
    """Compiled validators of the same schemas: valid or the first error (fast)."""

    def first_error(self, direction: Direction, kind: str, obj: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(json path, reason)`` of the first way ``obj`` breaks schema ``direction/kind``, or None.

        The validator stops at that error: its cost does not grow with how
        many others there are. The reason never quotes the value (``mask``).
        """
        try:
            self.fast[direction][kind].validate(obj)
        except jsonschema_rs.ValidationError as error:
            return json_path(error.instance_path), error.message[:MAX_REASON_CHARS]
        except ValueError:  # what its converter cannot take (nesting past its recursion limit)
            return "$", "the message cannot be validated"
        return None

    def errors(self, direction: Direction, message: Mapping[str, Any]) -> list[str]:
        """Why ``message`` breaks its schema: ``path: reason`` lines, empty if it is valid."""
        validator = self.validators[direction].get(str(message.get("type")))
        if validator is None:
            return [f"$.type: no {direction} message type {message.get('type')!r}"]
        return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(message)]


def _load(directory: Path) -> dict[str, dict[str, Any]]:
    """Every schema file under ``directory``; :class:`InstallError` unless all of :data:`assets.SCHEMAS` are there."""
    absent = assets.missing("JSON Schemas", directory, assets.SCHEMAS)
    if absent is not None:  # never a server that validates nothing: a missing schema would pass every message
        raise InstallError(f"broken install: {absent}")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*.json")):
        try:
            files[path.relative_to(directory).as_posix()] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InstallError(
                f"broken install: the JSON Schema {path} is unreadable ({exc}): reinstall bixweb"
            ) from None
    return files


@functools.cache
def schemas(directory: Path | None = None) -> SchemaSet:
    """Load the schemas (``bixweb/schemas`` unless told) once; each validator is built here and reused.

    Raises :class:`InstallError` if any schema the protocol names is missing.
    """
    files = _load(directory or assets.schema_dir())
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in files.values()
    )
    fast_registry = jsonschema_rs.Registry([(schema["$id"], schema) for schema in files.values()])
    validators: dict[Direction, dict[str, Draft202012Validator]] = {"server": {}, "client": {}, "ui": {}}
    fast: dict[Direction, dict[str, jsonschema_rs.Validator]] = {"server": {}, "client": {}, "ui": {}}
    for direction, by_type in validators.items():
        for name, schema in files.items():
            if name.startswith(direction + "/"):
                kind = name.removeprefix(direction + "/").removesuffix(".json")
                by_type[kind] = Draft202012Validator(schema, registry=registry)
                fast[direction][kind] = jsonschema_rs.Draft202012Validator(
                    schema, registry=fast_registry, mask="the value", validate_formats=False
                )
    return SchemaSet(files, validators, fast)

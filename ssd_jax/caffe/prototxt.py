"""The protobuf text format of Caffe's prototxt files, read without Caffe or protobuf: every
message a dict {field: [values]}, and the accessors the importer reads fields with."""

from __future__ import annotations

import re


class CaffeImportError(ValueError):
    """A prototxt or caffemodel that this importer cannot turn into an SSD; names the layer."""


# Strings first (a '#' or brace inside one is text), then comments (dropped), then the rest.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{}:;,\[\]<>]|[^\s{}:;,\[\]<>"\'#]+')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _tokens(text: str) -> list[str]:
    return [token for token in _TOKEN.findall(text) if not token.startswith("#")]


def _scalar(token: str):
    if token[0] in "\"'":  # the escapes of the text format; other characters as they are (UTF-8 names)
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])
    if token in ("true", "True"):
        return True
    if token in ("false", "False"):
        return False
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token  # an enum name, e.g. MAX or CENTER_SIZE


def parse_prototxt(text: str) -> dict[str, list]:
    """Protobuf text format -> {field: [values]}: every field a list (repeated or not), nested
    messages as such dicts, enum values as their names."""
    tokens, position = _tokens(text), 0

    def message(end: str | None) -> dict[str, list]:
        nonlocal position
        fields: dict[str, list] = {}
        while position < len(tokens):
            token = tokens[position]
            if token == end:
                position += 1
                return fields
            if token in ";,":
                position += 1
                continue
            name = token
            position += 1
            if position < len(tokens) and tokens[position] == ":":
                position += 1
            if position >= len(tokens):
                raise CaffeImportError(f"prototxt ends inside field {name!r}")
            if tokens[position] in "{<":
                close = "}" if tokens[position] == "{" else ">"
                position += 1
                fields.setdefault(name, []).append(message(close))
            elif tokens[position] == "[":  # a list of values: name: [a, b]
                position += 1
                while tokens[position] != "]":
                    if tokens[position] != ",":
                        fields.setdefault(name, []).append(_scalar(tokens[position]))
                    position += 1
                position += 1
            else:
                fields.setdefault(name, []).append(_scalar(tokens[position]))
                position += 1
        if end is not None:
            raise CaffeImportError("prototxt ends before a closing brace")
        return fields

    return message(None)


def one(fields: dict, name: str, default=None):
    """The last value of field ``name`` (protobuf's rule for a repeated non-repeated field), or ``default``."""
    values = fields.get(name)
    return values[-1] if values else default


def param(layer: dict, group: str) -> dict:
    """The ``group`` message of a layer (``convolution_param``...), {} if absent."""
    return one(layer, group, {}) or {}


def size(fields: dict, name: str, default: int) -> int:
    """A Caffe size that may be given once, as name_h / name_w, or repeated (equal) for each axis."""
    values = fields.get(name)
    if values:
        if len(set(values)) != 1:
            raise CaffeImportError(f"non-square {name} {values} is not supported")
        return int(values[0])
    h, w = one(fields, f"{name}_h"), one(fields, f"{name}_w")
    if h is not None or w is not None:
        if h != w:
            raise CaffeImportError(f"non-square {name}_h {h} / {name}_w {w} is not supported")
        return int(h)
    return default

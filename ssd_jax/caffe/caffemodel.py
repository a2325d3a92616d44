"""The binary protobuf of Caffe's .caffemodel files, read without Caffe or protobuf: the wire
format (varint keys, length-delimited messages, packed repeated fields) and the NetParameter
fields that hold layers' names and weight blobs."""

from __future__ import annotations

import os

import numpy as np

from ssd_jax.caffe.prototxt import CaffeImportError


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of a message: ints for varint/fixed, bytes for length-delimited."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = data[position:position + 8], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire == 5:
            value, position = data[position:position + 4], position + 4
        else:
            raise CaffeImportError(f"caffemodel: unsupported protobuf wire type {wire} (field {number})")
        if position > end:
            raise CaffeImportError(f"caffemodel: field {number} runs past the end of its message (truncated file?)")
        yield number, wire, value


def _blob(data: bytes) -> np.ndarray:
    """BlobProto -> array: data (5, float32) or double_data (8), shape (7: BlobShape) or the old
    num/channels/height/width (1-4)."""
    floats, doubles, shape, legacy = [], [], None, {}
    for number, wire, value in _fields(data):
        if number == 5:
            floats.append(np.frombuffer(value, "<f4"))  # packed (wire 2) or one value (wire 5)
        elif number == 8:
            doubles.append(np.frombuffer(value, "<f8"))
        elif number == 7:
            dims = []
            for dim_number, dim_wire, dim in _fields(value):
                if dim_number == 1 and dim_wire == 2:
                    position = 0
                    while position < len(dim):
                        item, position = _varint(dim, position)
                        dims.append(item)
                elif dim_number == 1:
                    dims.append(dim)
            shape = tuple(dims)
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
    values = np.concatenate(floats) if floats else (np.concatenate(doubles) if doubles else np.zeros(0))
    if shape is None:  # the old 4-d num, channels, height, width
        shape = tuple(legacy.get(i, 1) for i in (1, 2, 3, 4))
    if int(np.prod(shape)) != values.size:
        raise CaffeImportError(f"caffemodel: a blob of shape {shape} holds {values.size} values")
    return values.astype(np.float32).reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """A .caffemodel (NetParameter) -> {layer name: [blobs]} for the layers that have blobs.

    Reads the current ``layer`` messages (field 100: name 1, blobs 7) and the old V1 ``layers``
    (field 2: name 4, blobs 6).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caffemodel not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    weights: dict[str, list[np.ndarray]] = {}
    try:
        for number, wire, value in _fields(data):
            if wire != 2 or number not in (100, 2):
                continue
            name_field, blob_field = (1, 7) if number == 100 else (4, 6)
            name, blobs = None, []
            for field, field_wire, field_value in _fields(value):
                if field == name_field and field_wire == 2:
                    name = field_value.decode("utf-8")
                elif field == blob_field and field_wire == 2:
                    blobs.append(_blob(field_value))
            if name is not None and blobs:
                weights[name] = blobs
    except (IndexError, ValueError, UnicodeDecodeError) as error:  # CaffeImportError is a ValueError
        raise CaffeImportError(f"{path} is not a readable caffemodel (truncated or not a NetParameter): "
                               f"{error}") from error
    if not weights:
        raise CaffeImportError(f"{path} holds no layer with weights: not a caffemodel?")
    return weights

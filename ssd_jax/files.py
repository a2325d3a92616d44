"""Writing files for users: never half a file, never over something ssd_jax did not write.

Every command that writes a named output goes through this module:

- ``check_writable(directory)``: creates the directory and proves that a file can be written
  there, before any long work starts.
- ``write_atomically(path, data)`` (``write_json_atomically``, ``write_png``): a temporary file
  in the same directory, then one rename. A reader sees the old file or the new one, never half
  of one; an error removes the temporary file (a kill leaves the hidden ``.NAME.PID.tmp``).
- ``replace(staging, path)``: puts a finished file or directory in place by renames; the old one
  is removed only once the new one has its name.
- ``claim(path, overwrite=..., is_ours=...)``: whether an output may be written at ``path``. A
  free path may; an existing one only with ``overwrite`` and only if it is recognisably an
  ssd_jax artifact (``is_ours``), never an arbitrary file or folder.

What makes a file recognisably ours: the metadata ssd_jax writes into it or beside it. JSON
files carry ``"producer": "ssd_jax"`` (``PRODUCER``), PNG pictures a ``Software`` text chunk
with the same value (``png_info``); exporters and checkpoints recognise their own artifacts by
their metadata files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

PRODUCER = "ssd_jax"


class OutputExistsError(FileExistsError):
    """An output path is taken: by a file ssd_jax did not write, or without ``--overwrite``."""


# ----------------------------------------------------------------------------- writing
def check_writable(directory: str | os.PathLike) -> str:
    """Creates ``directory`` (and its parents) if needed and writes and removes a probe file
    there -> the directory. Raises ``OSError`` (NotADirectoryError, PermissionError, ...) if it
    cannot be written, naming the directory."""
    directory = os.fspath(directory) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test."):
            pass
    except OSError as error:
        raise type(error)(error.errno, f"cannot write to {directory} ({error.strerror or error})") from error
    return directory


def temporary_name(path: str) -> str:
    """A hidden name beside ``path`` for writing it before the rename that finishes it."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.getpid()}.tmp")


def write_atomically(path: str | os.PathLike, data: bytes | str) -> str:
    """Writes ``data`` to ``path`` through a temporary file in its directory and a rename: an error
    (a full disk) or an interruption never leaves a partial ``path``, nor the temporary file."""
    path = os.fspath(path)
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return path


def write_json_atomically(path: str | os.PathLike, payload, *, indent: int | None = 2) -> str:
    """``payload`` as JSON at ``path``, atomically (``write_atomically``)."""
    return write_atomically(path, json.dumps(payload, indent=indent) + "\n")


def write_png(path: str | os.PathLike, picture) -> str:
    """A PIL image as a PNG at ``path``, atomically, marked as ssd_jax's (``png_info``)."""
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=png_info())
    return write_atomically(path, buffer.getvalue())


def staging_directory(path: str | os.PathLike) -> str:
    """A new empty hidden directory beside ``path`` for building a directory output in, to be put
    in place with ``replace`` (or removed with ``discard``)."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".{name}.partial.")


def discard(staging: str) -> None:
    """Removes a staging file or directory (what ``staging_directory`` or a temporary name made)."""
    if os.path.isdir(staging) and not os.path.islink(staging):
        shutil.rmtree(staging, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(staging)


def replace(staging: str | os.PathLike, path: str | os.PathLike) -> str:
    """Puts the finished ``staging`` file or directory at ``path``.

    A file takes the name in one rename. A directory takes the place of an existing one in two:
    the old one steps aside under a hidden name, the new one takes the name, then the old one is
    removed, so that ``path`` is only ever missing between two renames, never half written.
    Callers decide with ``claim`` whether ``path`` may be replaced at all.
    """
    staging, path = os.fspath(staging), os.fspath(path)
    if not os.path.isdir(staging) or not os.path.lexists(path):
        os.replace(staging, path)
        return path
    parent, name = os.path.split(os.path.abspath(path))
    previous = tempfile.mkdtemp(dir=parent, prefix=f".{name}.previous.")
    os.rmdir(previous)  # a unique name for the old one to step aside to
    os.replace(path, previous)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(previous, path)
        raise
    discard(previous)
    return path


# ----------------------------------------------------------------------------- what is ours
def claim(path: str | os.PathLike, *, overwrite: bool, is_ours: Callable[[str], bool], what: str,
          flag: str = "--overwrite") -> bool:
    """Whether ``path`` may receive the output ``what`` (e.g. 'the SavedModel') -> True if it
    exists (and will be replaced), False if it is free.

    Raises ``OutputExistsError`` when ``path`` exists and ``overwrite`` is off, or when it exists
    and ``is_ours(path)`` says it is not an ssd_jax artifact: ssd_jax never replaces what it did
    not write, whatever the flags.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return False
    kind = "folder" if os.path.isdir(path) else "file"
    if not is_ours(path):
        raise OutputExistsError(
            f"{path} already exists and is not {what} written by ssd_jax (a {kind} of something else); ssd_jax "
            f"never replaces what it did not write: choose another path, or move it away yourself")
    if not overwrite:
        raise OutputExistsError(f"{path} already holds {what}; pass {flag} to replace it, or choose another path")
    return True


def claim_all(paths: Iterable[str], *, overwrite: bool, is_ours: Callable[[str], bool], what: str,
              flag: str = "--overwrite") -> None:
    """``claim`` for the files one command writes into a directory, reporting every taken one at once."""
    taken = [path for path in paths if os.path.lexists(path)]
    foreign = [path for path in taken if not is_ours(path)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"{shown} already exist{'s' if len(foreign) == 1 else ''} and {'is' if len(foreign) == 1 else 'are'} not "
            f"{what} written by ssd_jax; ssd_jax never replaces what it did not write: choose another output "
            f"directory, or move {'it' if len(foreign) == 1 else 'them'} away yourself")
    if taken and not overwrite:
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise OutputExistsError(f"{shown} already exist{'s' if len(taken) == 1 else ''} ({what} of an earlier run); "
                                f"pass {flag} to replace {'it' if len(taken) == 1 else 'them'}, or choose another "
                                f"output directory")


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``, or None if it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_our_json(path: str | os.PathLike, *, legacy: Callable[[dict], bool] = lambda value: False) -> bool:
    """Whether ``path`` is a JSON object ssd_jax wrote: ``"producer": "ssd_jax"`` in it, or
    ``legacy(value)`` for the files of versions before that field."""
    value = read_json(path)
    return isinstance(value, dict) and (value.get("producer") == PRODUCER or legacy(value))


def png_info():
    """PNG metadata that marks a picture as ssd_jax's (``PngImagePlugin.PngInfo``) for
    ``Image.save(..., pnginfo=png_info())``."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PRODUCER)
    return info


def is_our_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG picture that ssd_jax drew (its ``Software`` text chunk)."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return picture.format == "PNG" and getattr(picture, "text", {}).get("Software") == PRODUCER
    except OSError:
        return False

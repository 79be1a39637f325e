"""Files the user names: checks on inputs, and outputs that appear whole or not at all.

Every pydiff command and every ``save_*`` function writes through :func:`atomic_output` (one
file) or :func:`atomic_output_dir` (a folder such as a checkpoint). Both write next to the
target under a hidden ``.<name>.partial-<random>`` name and move the result into place only
once it is complete, so

- an interrupted or failed write (Ctrl-C, an exception, a full disk) leaves nothing behind,
- an existing output is never truncated before the new one is complete,
- a missing output folder is created (and removed again if the write fails),
- a folder that cannot be created or written gives an :class:`~pydiff.InputError` naming it.

:func:`check_output` runs the same folder checks without writing, for commands that should
refuse a bad output path before a long computation, and :func:`check_input_file` /
:func:`check_input_dir` turn a missing, empty or wrong-kind input into one clear message.

Example:
    >>> import json, tempfile, pathlib
    >>> from pydiff.files import atomic_output
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_output(folder / "new" / "table.json") as tmp:
    ...     _ = tmp.write_text(json.dumps({"ok": 1}))
    >>> sorted(p.name for p in (folder / "new").iterdir())
    ['table.json']
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError

# the disk, not pydiff: the user can fix these (free space, quota)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _show(path: str | os.PathLike) -> str:
    return repr(os.fspath(path))


def check_input_file(path: str | os.PathLike, what: str = "input", *,
                     allow_empty: bool = False) -> Path:
    """``path`` as a ``Path`` if it is a readable (non-empty) file, else an InputError.

    Example:
        >>> from pydiff.files import check_input_file
        >>> check_input_file("/no/such.wav", "input")
        Traceback (most recent call last):
        ...
        pydiff.errors.InputError: input '/no/such.wav' does not exist; expected a file
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {_show(path)} does not exist; expected a file")
    if p.is_dir():
        raise InputError(f"{what} {_show(path)} is a folder; expected a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {_show(path)} is not readable (permission denied)")
    if not allow_empty and p.stat().st_size == 0:
        raise InputError(f"{what} {_show(path)} is empty (0 bytes)")
    return p


def check_input_dir(path: str | os.PathLike, what: str = "input folder") -> Path:
    """``path`` as a ``Path`` if it is a readable folder, else an InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {_show(path)} does not exist; expected a folder")
    if not p.is_dir():
        raise InputError(f"{what} {_show(path)} is a file; expected a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise InputError(f"{what} {_show(path)} is not readable (permission denied)")
    return p


def check_output(path: str | os.PathLike, what: str = "output", *, folder: bool = False) -> Path:
    """Check, without writing anything, that ``path`` can be written (a file, or a folder).

    The nearest existing ancestor must be a writable folder (missing folders below it are
    created when the output is written); an existing ``path`` must be of the right kind.
    """
    p = Path(path)
    if p.exists() and p.is_dir() != folder:
        kind, expected = ("a file", "a folder") if folder else ("a folder", "a file path")
        raise InputError(f"{what} {_show(path)} is {kind}; expected {expected}")
    target = p if folder and p.is_dir() else Path(os.path.abspath(p)).parent
    _writable_ancestor(target, what, path)
    return p


def _writable_ancestor(folder: Path, what: str, path: str | os.PathLike) -> list[Path]:
    """Check that ``folder`` exists or can be created; returns the missing folders, outermost
    first."""
    folder = Path(os.path.abspath(folder))
    missing: list[Path] = []
    existing = folder
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {what} {_show(path)}: {str(existing)!r} is a file, "
                         "not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {_show(path)}: folder {str(existing)!r} is not "
                         "writable (permission denied)")
    return missing[::-1]


def _make_folders(folder: Path, what: str, path: str | os.PathLike) -> list[Path]:
    missing = _writable_ancestor(folder, what, path)
    try:
        for m in missing:
            m.mkdir()
    except OSError as err:
        _remove_empty(missing)
        raise InputError(f"cannot create the folder of {what} {_show(path)}: "
                         f"{err.strerror or err}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for f in reversed(folders):  # innermost first
        try:
            f.rmdir()
        except OSError:
            pass


def _partial_name(target: Path) -> Path:
    # keep the suffix: writers such as soundfile and matplotlib pick the format from it
    return target.with_name(f".{target.name}.partial-{secrets.token_hex(4)}{target.suffix}")


def _as_input_error(err: OSError, what: str, path: str | os.PathLike) -> InputError:
    return InputError(f"cannot write {what} {_show(path)}: {err.strerror or err}")


def _about_output(err: BaseException, tmp: Path) -> bool:
    """True for an OSError of writing the output itself (a full disk, the temporary file
    refused), not of something else the writer touched (that one keeps its own message)."""
    if not isinstance(err, OSError):
        return False
    if err.errno in _FULL_ERRNOS:
        return True
    names = {os.fspath(f) for f in (err.filename, err.filename2) if f is not None}
    return any(n == os.fspath(tmp) or n.startswith(os.fspath(tmp) + os.sep) for n in names)


@contextmanager
def atomic_output(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Write one file atomically: yields a temporary path next to ``path``; on success it
    replaces ``path``, on any error (or Ctrl-C) it is removed. Missing folders are created.

    Example:
        >>> import tempfile, pathlib
        >>> from pydiff.files import atomic_output
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_output(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise InputError(f"{what} {_show(path)} is a folder; expected a file path")
    created = _make_folders(target.parent, what, path)
    tmp = _partial_name(target)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as err:
        _remove_empty(created)
        raise _as_input_error(err, what, path) from None
    try:
        yield tmp
        if target.exists():
            shutil.copymode(target, tmp)  # an overwritten output keeps its permissions
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise _as_input_error(err, what, path) from err
    except BaseException as err:
        _unlink(tmp)
        _remove_empty(created)
        if _about_output(err, tmp):
            raise _as_input_error(err, what, path) from err
        raise


@contextmanager
def atomic_output_dir(path: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Write a folder atomically entry by entry: yields a temporary folder next to ``path``;
    on success each entry written replaces the entry of the same name in ``path`` (other
    entries of ``path`` stay), on any error (or Ctrl-C) the temporary folder is removed.

    Example:
        >>> import tempfile, pathlib
        >>> from pydiff.files import atomic_output_dir
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "ckpt"
        >>> with atomic_output_dir(out) as tmp:
        ...     _ = (tmp / "config.json").write_text("{}")
        >>> [p.name for p in out.iterdir()]
        ['config.json']
    """
    target = Path(os.path.abspath(path))
    if target.exists() and not target.is_dir():
        raise InputError(f"{what} {_show(path)} is a file; expected a folder")
    created = _make_folders(target.parent, what, path)
    tmp = _partial_name(target)
    try:
        tmp.mkdir()
    except OSError as err:
        _remove_empty(created)
        raise _as_input_error(err, what, path) from None
    try:
        yield tmp
        try:
            if not target.exists():
                os.rename(tmp, target)
            else:
                _swap_entries(tmp, target)
        except OSError as err:
            raise _as_input_error(err, what, path) from err
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if _about_output(err, tmp):
            raise _as_input_error(err, what, path) from err
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _swap_entries(src: Path, dst: Path) -> None:
    """Move every entry of ``src`` over the entry of the same name in ``dst``."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() or target.is_dir():
            # a folder cannot replace a folder in one rename: move the old one aside first
            old = None
            if target.exists() or target.is_symlink():
                old = target.with_name(f".{entry.name}.old-{secrets.token_hex(4)}")
                os.rename(target, old)
            os.rename(entry, target)
            if old is not None:
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    _unlink(old)
        else:
            if target.exists():
                shutil.copymode(target, entry)
            os.replace(entry, target)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_text(path: str | os.PathLike, text: str, what: str = "output") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, what) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, what: str = "output", **dump: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (``dump``: options of ``json.dumps``)."""
    return write_text(path, json.dumps(obj, **({"indent": 2} | dump)), what)


__all__ = ["atomic_output", "atomic_output_dir", "check_input_file", "check_input_dir",
           "check_output", "write_text", "write_json"]

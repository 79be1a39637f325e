"""pydiff.files: outputs appear whole or not at all; inputs fail with one clear message."""

from __future__ import annotations

import doctest
import os

import pytest

import pydiff.errors
import pydiff.files
from pydiff import InputError
from pydiff.files import (
    atomic_output,
    atomic_output_dir,
    check_input_dir,
    check_input_file,
    check_output,
    write_json,
)


def test_doctests() -> None:
    for module in (pydiff.files, pydiff.errors):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_failed_write_keeps_the_old_output_and_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "result.txt"
    out.write_text("old")
    os.chmod(out, 0o640)
    for interruption in (RuntimeError("a bug in the writer"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)), atomic_output(out) as tmp:
            tmp.write_text("half of the ne")
            assert out.read_text() == "old"  # not truncated while the new one is written
            raise interruption
        assert out.read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
    with atomic_output(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and (out.stat().st_mode & 0o777) == 0o640


def test_missing_folders_are_created_and_removed_again_on_failure(tmp_path) -> None:
    out = tmp_path / "a" / "b" / "x.json"
    with pytest.raises(ValueError, match="not JSON"), atomic_output(out) as tmp:
        assert tmp.parent.is_dir()  # created for the write
        raise ValueError("not JSON")
    assert list(tmp_path.iterdir()) == []
    write_json(out, {"k": 1})
    assert out.read_text() == '{\n  "k": 1\n}'


def test_folder_output_replaces_written_entries_and_keeps_others(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "score").mkdir(parents=True)
    (ckpt / "score" / "old.bin").write_text("old")
    (ckpt / "snapshots").mkdir()
    (ckpt / "config.json").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(ckpt) as tmp:
        (tmp / "config.json").write_text("new")
        raise KeyboardInterrupt
    assert (ckpt / "config.json").read_text() == "old"
    with atomic_output_dir(ckpt) as tmp:
        (tmp / "score").mkdir()
        (tmp / "score" / "new.bin").write_text("new")
        (tmp / "config.json").write_text("new")
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "score", "snapshots"]
    assert [p.name for p in (ckpt / "score").iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_paths_name_the_culprit(tmp_path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases = [
        (lambda: check_input_file(tmp_path / "nope.wav", "--input"), "--input", "does not exist"),
        (lambda: check_input_file(tmp_path, "--input"), "--input", "is a folder"),
        (lambda: check_input_file(empty, "audio"), "empty.wav", "is empty"),
        (lambda: check_input_dir(a_file, "--checkpoint"), "--checkpoint", "is a file"),
        (lambda: check_output(a_file / "x.wav", "-o"), "a_file", "not a folder"),
        (lambda: check_output(tmp_path, "-o"), "-o", "is a folder"),
        (lambda: check_output(a_file, "--out", folder=True), "--out", "is a file"),
        (lambda: atomic_output(tmp_path).__enter__(), "output", "is a folder"),
    ]
    for call, *culprits in cases:
        with pytest.raises(InputError) as info:
            call()
        for c in culprits:
            assert c in str(info.value), (c, str(info.value))


def test_read_only_folder(tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    probe = folder / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        pass
    else:
        probe.unlink()
        pytest.skip("read-only folders are writable here (running as root)")
    with pytest.raises(InputError, match="'.*ro' is not writable"):
        check_output(folder / "sub" / "x.wav", "-o")
    with pytest.raises(InputError, match="not writable"), atomic_output(folder / "x.txt"):
        pass

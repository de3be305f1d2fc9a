"""Crash-safe writes: a file or a folder appears whole or not at all.

Everything is written to a hidden temporary sibling, flushed to disk, and renamed into place; the rename is the commit.
A process killed at any instant leaves either the previous complete file/folder or the new complete one, plus at most
a stale `.*.tmp-*` sibling that the next write of the same path removes. A full disk fails the write before the rename,
so the previous version stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"
OLD_MARK = ".old-"
READY_NAME = ".ready"
TRASH_MARK = ".trash-"


def fsync_dir(path) -> None:
    """Flush a directory entry (a rename or a new file in it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path) -> None:
    """Flush every file under `path`, then every directory, so a rename that follows commits complete contents."""
    path = Path(path)
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    for root, _dirs, _ in os.walk(path, topdown=False):
        fsync_dir(root)


def _siblings(path: Path, mark: str) -> list[Path]:
    return list(path.parent.glob(f".{path.name}{mark}*")) if path.parent.is_dir() else []


def recover(path) -> None:
    """Finish or undo a folder replacement that a kill interrupted: if `path` is missing but its previous version was
    set aside, put it back; then remove stale temporary siblings."""
    path = Path(path)
    old = sorted(_siblings(path, OLD_MARK))
    if not path.exists() and old:
        os.replace(old[-1], path)
        old = old[:-1]
    for stale in old + _siblings(path, TMP_MARK):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def commit_file(partial, path) -> Path:
    """Flush the complete file `partial` (written by a library that takes a path) and rename it to `path`."""
    partial, path = Path(partial), Path(path)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    fsync_dir(path.parent)
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, **kwargs) -> Path:
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


@contextlib.contextmanager
def folder(path, overwrite: bool = True) -> Iterator[Path]:
    """Build a folder atomically: write into the yielded temporary sibling; on a clean exit it replaces `path`
    (when `overwrite`, else an existing `path` is an error). On an exception the temporary folder is removed and
    `path` is untouched.

        with atomic.folder("out/model") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True or choose another folder.")
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(src, dst) -> None:
    """Move the complete folder `src` to `dst`, replacing any `dst`. A directory cannot be renamed over a non-empty
    one, so the old `dst` is first set aside as `.dst.old-*`; `recover(dst)` restores it if a kill lands between the
    two renames."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}{OLD_MARK}{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------------
# Many files into a folder that also holds other things (a run's output_dir holds its checkpoints next to the model)


def commit_contents(staged, folder, last: str | None = None) -> None:
    """Move every entry of the complete folder `staged` into `folder`, replacing entries of the same name, `last`
    (a commit marker such as a summary file) last of all.

    Two phases: `staged` is flushed and renamed to `folder/.ready` (the commit), then its entries are moved one by one.
    A kill during the moves leaves `.ready` behind, and `finish_contents(folder)` completes them; so, once a caller
    runs `finish_contents` before reading, the contents appear whole or not at all."""
    staged, folder = Path(staged), Path(folder)
    ready = folder / READY_NAME
    fsync_tree(staged)
    if ready.exists():
        shutil.rmtree(ready)
    os.replace(staged, ready)
    fsync_dir(folder)
    finish_contents(folder, last)


def finish_contents(folder, last: str | None = None) -> bool:
    """Complete an interrupted `commit_contents` into `folder`; True if there was one."""
    folder = Path(folder)
    ready = folder / READY_NAME
    if not ready.is_dir():
        return False
    names = sorted(os.listdir(ready), key=lambda name: (name == last, name))
    for name in names:
        _move_entry(ready / name, folder / name)
    fsync_dir(folder)
    ready.rmdir()
    fsync_dir(folder)
    return True


def _move_entry(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir():
        replace_folder(src, dst)
    else:
        if dst.is_dir():
            shutil.rmtree(dst)
        os.replace(src, dst)


def remove_folder(path) -> None:
    """Delete a folder such that a kill midway leaves either all of it or none of it under its name: it is first
    renamed to a `.name.trash-*` sibling (which `empty_trash` removes later)."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.parent / f".{path.name}{TRASH_MARK}{os.getpid()}"
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def empty_trash(path) -> None:
    """Remove what `remove_folder(path)` set aside before a kill."""
    for stale in _siblings(Path(path), TRASH_MARK):
        shutil.rmtree(stale, ignore_errors=True)

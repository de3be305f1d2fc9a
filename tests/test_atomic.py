"""Crash-safe writes: an interrupted commit is completed by the next reader, never left half done."""

import pytest

from openllm import atomic


def test_commit_contents_interrupted_midway_is_completed(tmp_path, monkeypatch):
    folder, staged = tmp_path / "run", tmp_path / "run" / ".tmp-final"
    (folder / "checkpoint-4").mkdir(parents=True)
    staged.mkdir()
    for name, text in (("model.safetensors", "weights"), ("README.md", "card"), ("training_summary.json", "{}")):
        (staged / name).write_text(text)
    move, moved = atomic._move_entry, []

    def crash_after_one(src, dst):
        if moved:
            raise KeyboardInterrupt  # stands for a kill between two moves
        move(src, dst)
        moved.append(dst.name)

    monkeypatch.setattr(atomic, "_move_entry", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        atomic.commit_contents(staged, folder, last="training_summary.json")
    assert moved == ["README.md"] and not (folder / "training_summary.json").exists()  # the marker goes last
    monkeypatch.setattr(atomic, "_move_entry", move)
    assert atomic.finish_contents(folder, last="training_summary.json")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "checkpoint-4", "model.safetensors",
                                                         "training_summary.json"]
    assert not atomic.finish_contents(folder)  # nothing left to do


def test_remove_folder_is_all_or_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "sub" / "file").write_text("x")
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)  # killed right after the rename
    atomic.remove_folder(run)
    assert not run.exists() and len(list(tmp_path.glob(".run.trash-*"))) == 1
    monkeypatch.undo()
    atomic.empty_trash(run)
    assert list(tmp_path.iterdir()) == []


def test_commit_file_renames_a_complete_file(tmp_path):
    partial = tmp_path / ".model.gguf.tmp-1"
    partial.write_bytes(b"GGUF")
    atomic.commit_file(partial, tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == b"GGUF" and not partial.exists()

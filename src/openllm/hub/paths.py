"""Checks on output folders before anything is written there."""

from pathlib import Path


def check_output_folder(path) -> None:
    """Raise FileExistsError when `path` holds files but not a model: a model folder is replaced as a whole when it is
    written again, and a folder of other files must not be."""
    path = Path(path).expanduser()
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise FileExistsError(f"{str(path)!r} already holds files that are not a model folder; the output replaces "
                              "the whole folder, so choose a new or empty one.")

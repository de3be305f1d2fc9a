"""Checks on model arguments that can be a local folder or a Hub id, before transformers turns a typo into a Hub
repo-id error."""

from pathlib import Path


def check_model_path(model_name_or_path: str) -> None:
    """Raise FileNotFoundError with the fix when `model_name_or_path` is meant as a local folder but is not one."""
    path = Path(model_name_or_path).expanduser()
    looks_local = path.exists() or model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if not looks_local:
        return
    if not path.is_dir():
        raise FileNotFoundError(f"Model folder {model_name_or_path!r} does not exist. Pass a folder written by "
                                "`save_pretrained` or a Hub model id such as `org/name`.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_name_or_path!r} has no config.json, so it is not a model folder. Pass a "
                                "folder written by `save_pretrained` (with its tokenizer) or a Hub model id.")


def check_output_folder(path) -> None:
    """Raise FileExistsError when `path` holds files but not a model: a model folder is replaced as a whole when it is
    written again, and a folder of other files must not be."""
    path = Path(path).expanduser()
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise FileExistsError(f"{str(path)!r} already holds files that are not a model folder; the output replaces "
                              "the whole folder, so choose a new or empty one.")

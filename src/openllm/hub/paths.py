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

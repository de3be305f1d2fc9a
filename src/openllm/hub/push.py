"""Publishing a finished model folder to the Hugging Face Hub."""

import logging
import os
from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

# training state that belongs on the machine that trained, not in the model repo
# (and hidden staging folders of an interrupted save)
LOCAL_ONLY = ["checkpoint-*", "checkpoint-*/**", "runs/**", ".tmp-*/**", ".ready/**"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def push_folder(folder, repo_id: Optional[str] = None, private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: str = "Upload model trained with OpenLLM") -> Optional[str]:
    """Upload `folder` (checkpoints and logs left out) to the model repo `repo_id` (default: the folder's name).
    Offline, or on a network, auth or permission error, say so with the command to run later and leave the folder
    ready. Returns the repo URL, or None when nothing was pushed."""
    repo_id = repo_id or Path(folder).resolve().name
    command = f"hf upload {repo_id} {folder} . --exclude 'checkpoint-*/*' --exclude 'runs/*'"
    if _offline():
        logger.warning("Could not push to the Hub: HF_HUB_OFFLINE is set. %s is ready; push it later with: %s",
                       folder, command)
        return None
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="model",
                          commit_message=commit_message, ignore_patterns=LOCAL_ONLY)
    except Exception as e:  # connection, auth or permission: the run itself succeeded
        logger.warning("Could not push to the Hub (%s: %s). %s is ready; push it later with: %s",
                       type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", folder, command)
        return None
    logger.info("Pushed %s to https://huggingface.co/%s", folder, url.repo_id)
    return f"https://huggingface.co/{url.repo_id}"

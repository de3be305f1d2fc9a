"""Files that ship with the package: the recipes (YAML) and the model-card templates.

A source checkout (or an editable install) reads them from the repository's `recipes/` and `model_cards/`; a wheel
installs them under `<prefix>/share/openllm/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]


def shipped(kind: str) -> Path:
    """The folder of shipped `kind` files ("recipes" or "model_cards")."""
    candidates = (_CHECKOUT / kind, Path(sys.prefix) / "share" / "openllm" / kind)
    return next((d for d in candidates if d.is_dir()), candidates[0])


def recipe_names() -> list[str]:
    root = shipped("recipes")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml") if "accelerate_configs" not in p.parts)


def resolve_recipe(path: str) -> str:
    """`path` when it is a file; else the shipped recipe of that name (`pretrain_quickstart.yaml`, `chain/sft.yaml`,
    `recipes/sft_debug.yaml`, with or without `.yaml`), so recipes run from any folder."""
    if Path(path).is_file():
        return path
    root = shipped("recipes")
    name = path.removeprefix("recipes/")
    for candidate in (root / name, root / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"No recipe {path!r}: it is neither a file nor one of the recipes shipped with openllm "
                            f"({', '.join(recipe_names())}).")

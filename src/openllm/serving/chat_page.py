"""The chat page: one dependency-free HTML file (static/chat.html) that talks to the OpenAI routes, streams tokens
and colours each by the probability the model gave it."""

import functools
import html
from importlib import resources


@functools.cache
def _template() -> str:
    return resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8")


def chat_page(model_name: str) -> str:
    return _template().replace("{{MODEL}}", html.escape(model_name))

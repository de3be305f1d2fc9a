"""The chat page: one dependency-free HTML file (static/chat.html) that talks to the OpenAI routes, streams tokens
and colours each by the probability the model gave it. `router` serves it at /chat; the app includes it only when
the page is on, so without it /chat is an unknown route like any other."""

import functools
import html
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()


@functools.cache
def _template() -> str:
    return resources.files(__package__).joinpath("static/chat.html").read_text(encoding="utf-8")


def chat_page(model_name: str) -> str:
    return _template().replace("{{MODEL}}", html.escape(model_name))


@router.get("/chat", response_class=HTMLResponse, include_in_schema=False)
async def chat(request: Request):
    return HTMLResponse(chat_page(request.app.state.config.model_name))

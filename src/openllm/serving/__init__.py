"""Serving over the TGI and OpenAI HTTP protocols (`openllm serve`). Needs the `serve` extra (fastapi, uvicorn,
prometheus-client); importing this package alone imports none of them."""

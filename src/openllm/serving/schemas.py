"""Request bodies of the TGI and OpenAI protocols. Unknown fields are rejected so that a typo is an error, not a
silently ignored setting; fields the protocols define but this server does not implement are accepted only at
their neutral value."""

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STOP_SEQUENCES = 4
MAX_TOP_N = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unsupported(model: BaseModel, **neutral):
    for name, value in neutral.items():
        given = getattr(model, name)
        if given is not None and given != value:
            raise ValueError(f"`{name}` is not supported by this server; leave it unset")


# ---------------------------------------------------------------------------------------------------- TGI
class TGIParameters(_Strict):
    max_new_tokens: Optional[int] = Field(None, ge=1)
    do_sample: bool = False
    temperature: Optional[float] = Field(None, gt=0, le=100)
    top_k: Optional[int] = Field(None, gt=0)
    top_p: Optional[float] = Field(None, gt=0, lt=1)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    top_n_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOP_N)
    truncate: Optional[int] = Field(None, ge=1)
    best_of: Optional[int] = None
    typical_p: Optional[float] = None
    watermark: bool = False
    grammar: Optional[dict] = None
    adapter_id: Optional[str] = None

    @model_validator(mode="after")
    def _check(self):
        _unsupported(self, best_of=1, typical_p=1.0, watermark=False, grammar={}, adapter_id="")
        return self


class TGIRequest(_Strict):
    inputs: str = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


# ---------------------------------------------------------------------------------------------------- OpenAI
class StreamOptions(_Strict):
    include_usage: bool = False


class _OpenAISampling(_Strict):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    user: Optional[str] = None
    logit_bias: Optional[dict[str, float]] = None
    # common extensions (vLLM, TGI): passed through `extra_body` by the openai client
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)

    @model_validator(mode="after")
    def _check_stop(self):
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"`stop` takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}")
        _unsupported(self, logit_bias={})
        return self

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_OpenAISampling):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(16, ge=1)  # the OpenAI default
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_N)
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @model_validator(mode="after")
    def _check(self):
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("`prompt` must be one string (batches of prompts: send concurrent requests instead)")
        if self.prompt_text == "":
            raise ValueError("`prompt` must not be empty")
        _unsupported(self, best_of=1, suffix="")
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients add fields such as `tool_calls: null`, `name`
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[TextPart], None] = None

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_N)
    response_format: Optional[dict] = None
    tools: Optional[list] = None
    tool_choice: Union[str, dict, None] = None
    tool_prompt: Optional[str] = None
    parallel_tool_calls: Optional[bool] = None

    @model_validator(mode="after")
    def _check(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("`response_format` is not supported by this server; only {\"type\": \"text\"}")
        _unsupported(self, tools=[], tool_choice="none", tool_prompt="", parallel_tool_calls=False)
        return self

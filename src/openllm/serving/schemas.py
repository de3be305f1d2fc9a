"""Request bodies of the TGI and OpenAI protocols. Unknown fields are rejected so that a typo is an error, not a
silently ignored setting; fields the protocols define but this server does not implement are accepted only at
their neutral value."""

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..evaluation.confidence import check_threshold

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 1000  # per stop sequence: enough for any delimiter, and bounds the work each token costs
MAX_TOP_N = 20
MAX_BEST_OF = 2  # TGI's default --max-best-of


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Abstain(BaseModel):
    # an OpenLLM extension: withhold the answer when its confidence (geometric mean of its token probabilities) is
    # below this probability
    abstain_below: Optional[float] = None

    @field_validator("abstain_below")
    @classmethod
    def _check_abstain_below(cls, value):
        return None if value is None else check_threshold(value)


def check_stops(stop: Union[str, list[str], None]):
    """A field validator of `stop`: at most MAX_STOP_SEQUENCES sequences of at most MAX_STOP_CHARS characters."""
    stops = [stop] if isinstance(stop, str) else stop or []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ValueError(f"`stop` takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}")
    for one in stops:
        if len(one) > MAX_STOP_CHARS:
            raise ValueError(f"a stop sequence has {len(one):,} characters; the limit is {MAX_STOP_CHARS:,}")
    return stop


def _unsupported(model: BaseModel, **neutral):
    for name, value in neutral.items():
        given = getattr(model, name)
        if given is not None and given != value:
            raise ValueError(f"`{name}` is not supported by this server; leave it unset")


# ---------------------------------------------------------------------------------------------------- TGI
class TGIParameters(_Abstain, _Strict):
    """TGI's `GenerateParameters`: the same names, defaults and bounds (e.g. `top_p` strictly below 1)."""

    best_of: Optional[int] = Field(None, ge=1, le=MAX_BEST_OF)
    temperature: Optional[float] = Field(None, gt=0, le=100)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=10)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    top_k: Optional[int] = Field(None, gt=0)
    top_p: Optional[float] = Field(None, gt=0, lt=1)
    typical_p: Optional[float] = None
    do_sample: bool = False
    max_new_tokens: Optional[int] = Field(None, ge=1)
    return_full_text: Optional[bool] = None
    stop: list[str] = Field(default_factory=list)
    _check_stop = field_validator("stop")(check_stops)
    truncate: Optional[int] = Field(None, ge=1)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: Optional[int] = Field(None, ge=0, lt=2**63)
    top_n_tokens: Optional[int] = Field(None, ge=0, le=MAX_TOP_N)
    grammar: Optional["TGIGrammar"] = None
    adapter_id: Optional[str] = None

    @model_validator(mode="after")
    def _check(self):
        _unsupported(self, typical_p=1.0, watermark=False, adapter_id="")
        if (self.best_of or 1) > 1:
            if not self.sampling:
                raise ValueError("you must use sampling when `best_of` is > 1")
            if self.seed is not None:
                raise ValueError("`seed` must not be set when `best_of` > 1")
        return self

    @property
    def sampling(self) -> bool:
        # as in TGI, asking for any sampling setting turns sampling on
        return self.do_sample or any(v not in (None, 1.0) for v in (self.temperature, self.top_p)) or bool(self.top_k)


class TGIGrammar(_Strict):
    """TGI's `GrammarType`: a JSON schema (`json`, also `json_schema`) or a regular expression (`regex`)."""

    type: Literal["json", "json_schema", "regex"]
    value: Union[dict, str]

    @property
    def spec(self) -> tuple[str, object]:
        return ("regex" if self.type == "regex" else "json"), self.value


TGIParameters.model_rebuild()


class TGIRequest(_Strict):
    inputs: str = Field(min_length=1)
    # TGI samples when the body has no `parameters` at all (but not for `"parameters": {}`)
    parameters: TGIParameters = Field(default_factory=lambda: TGIParameters(do_sample=True))
    stream: bool = False


class SeedRequest(_Abstain, _Strict):
    """The body documented by the OpenLLM seed for `POST /generate`; answered like TGI's `/generate`."""

    prompt: str = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=100)  # 0 is greedy
    top_k: int = Field(0, ge=0)  # 0 keeps every token
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=0, lt=2**63)

    _check_stop = field_validator("stop")(check_stops)

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


TGI_FIELDS = set(TGIRequest.model_fields)
SEED_FIELDS = set(SeedRequest.model_fields)
TGI_SHAPE = '{"inputs": "...", "parameters": {"max_new_tokens": ..., ...}}'
SEED_SHAPE = '{"prompt": "...", "max_tokens": ..., "temperature": ..., "top_k": ..., "top_p": ...}'


def generate_body_schema(data) -> type[BaseModel]:
    """Which of the two bodies `POST /generate` accepts this one is: TGI's, or the seed's. A body with keys of both,
    or with keys of neither, is refused with both shapes spelled out."""
    keys = set(data) if isinstance(data, dict) else set()
    tgi, seed = keys & (TGI_FIELDS - {"stream"}), keys & (SEED_FIELDS - {"stop", "seed"})
    if "inputs" in keys and not seed:
        return TGIRequest
    if "prompt" in keys and not (keys & TGI_FIELDS):
        return SeedRequest
    if tgi and seed:
        raise ValueError(f"the body mixes TGI fields ({', '.join(sorted(tgi))}) with seed-API fields "
                         f"({', '.join(sorted(seed))}); send either TGI's shape {TGI_SHAPE} or the seed's shape "
                         f"{SEED_SHAPE}")
    raise ValueError(f"expected TGI's shape {TGI_SHAPE} or the seed's shape {SEED_SHAPE}; got fields "
                     f"{sorted(keys) if keys else 'none'}")


# ---------------------------------------------------------------------------------------------------- OpenAI
class StreamOptions(_Strict):
    include_usage: bool = False


class _OpenAISampling(_Abstain, _Strict):
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
    # structured output: `text`, `json_object` or `json_schema` (see `grammar`); vLLM takes it on completions too
    response_format: Optional[dict] = None

    _check_stop = field_validator("stop")(check_stops)

    @model_validator(mode="after")
    def _check_unsupported(self):
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


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients add fields such as `name`, `refusal: null`
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[TextPart], None] = None
    tool_calls: Optional[list[ToolCall]] = None  # an assistant's earlier calls
    tool_call_id: Optional[str] = None  # the call a tool message answers

    @property
    def num_chars(self) -> int:
        content = self.content
        text = len(content) if isinstance(content, str) else sum(len(p.text) for p in content or [])
        return text + sum(len(c.function.name) + len(c.function.arguments) for c in self.tool_calls or [])

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump(exclude_none=True) for c in self.tool_calls]
        return message


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Optional[str] = None
    parameters: Optional[dict] = None
    strict: Optional[bool] = None


class ToolSpec(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: dict  # {"name": ...}


class ChatCompletionRequest(_OpenAISampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_N)
    tools: Optional[list[ToolSpec]] = Field(None, max_length=64)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    tool_prompt: Optional[str] = None
    parallel_tool_calls: Optional[bool] = None

    @model_validator(mode="after")
    def _check(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("`tool_choice` needs `tools`")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.get("name") not in [
                t.function.name for t in self.tools]:
            raise ValueError(f"`tool_choice` names the function {self.tool_choice.function.get('name')!r}, which is "
                             "not among `tools`")
        _unsupported(self, tool_prompt="")
        return self

    @property
    def tool_mode(self) -> Optional[str]:
        """None (no tools offered, or `tool_choice: none`), "auto", "required" or "named" (`tool_name`)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return "named" if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice or "auto"

    @property
    def tool_name(self) -> Optional[str]:
        return self.tool_choice.function["name"] if isinstance(self.tool_choice, NamedToolChoice) else None


# ---------------------------------------------------------------------------------------------------- tools
class ToolRunRequest(_Strict):
    """`POST /v1/tools/{name}`: the arguments of one call, as an object or as its JSON text (OpenAI's
    `function.arguments`)."""

    arguments: Union[dict, str] = Field(default_factory=dict)

    @field_validator("arguments", mode="before")
    @classmethod
    def _object_or_text(cls, value):
        if not isinstance(value, (dict, str)):
            raise ValueError("must be a JSON object, or its JSON text")
        return value

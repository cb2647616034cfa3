"""Request bodies of the HTTP API, as pydantic models.

Fields this API does not know are ignored, as OpenAI ignores them. Fields of
more than one shape (message content, tool_choice, stop, metadata, embedding
input) are taken as they come and checked by the conversion, which names the
exact part that is wrong.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCallBody(_Body):
    name: str
    #: JSON text, as the model wrote it.
    arguments: str = ""


class ToolCallBody(_Body):
    id: str
    type: str = "function"
    function: FunctionCallBody


class MessageBody(_Body):
    role: str
    #: A string, a list of content parts ({"type": "text", "text": ...}) or null.
    content: Any = None
    name: str | None = None
    tool_calls: list[ToolCallBody] | None = None
    tool_call_id: str | None = None


class FunctionBody(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolBody(_Body):
    type: str
    function: FunctionBody | None = None


class StreamOptionsBody(_Body):
    include_usage: bool = False


class ChatCompletionBody(_Body):
    """POST /v1/chat/completions."""

    model: str
    messages: list[MessageBody] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptionsBody | None = None
    tools: list[ToolBody] | None = None
    #: "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.
    tool_choice: Any = None
    user: str | None = None
    n: int | None = None
    stop: Any = None
    metadata: Any = None
    response_format: Any = None
    logprobs: bool | None = None


class EmbeddingBody(_Body):
    """POST /v1/embeddings."""

    #: A string or a list of strings (token arrays are refused).
    input: Any
    model: str = ""
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None


# --- Anthropic Messages (POST /v1/messages) ---------------------------------


class AnthropicMessageBody(_Body):
    #: user, assistant, or system (recent Claude Code versions send system
    #: entries inside messages).
    role: str
    #: A string or a list of content blocks (text, tool_use, tool_result, ...).
    content: Any = None


class AnthropicToolBody(_Body):
    name: str = ""
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    #: Absent or "custom" for a client tool; server tools (web_search_..., bash_...) name a version.
    type: str | None = None


class MessagesBody(_Body):
    """POST /v1/messages."""

    model: str
    messages: list[AnthropicMessageBody] = Field(min_length=1)
    max_tokens: int
    #: A string or a list of text blocks.
    system: Any = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    tools: list[AnthropicToolBody] | None = None
    #: {"type": "auto" | "any" | "none"} or {"type": "tool", "name": ...}.
    tool_choice: Any = None
    #: {"user_id": ...}.
    metadata: Any = None
    stream: bool = False


class CountTokensBody(_Body):
    """POST /v1/messages/count_tokens."""

    model: str
    messages: list[AnthropicMessageBody] = Field(min_length=1)
    system: Any = None
    tools: list[AnthropicToolBody] | None = None
    tool_choice: Any = None


# --- OpenAI Responses (POST /v1/responses) -----------------------------------


class ResponsesBody(_Body):
    """POST /v1/responses."""

    model: str = ""
    #: A string or a list of input items (messages, function_call, function_call_output, ...).
    input: Any = None
    instructions: str | None = None
    #: Tools as the Responses API writes them ({"type": "function", "name", "parameters"}, hosted tools).
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: Any = None
    user: str | None = None
    #: {"format": {"type": "text"}, "verbosity": ...}; only the text format is supported.
    text: Any = None

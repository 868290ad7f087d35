"""Structured outputs at the gateway: ``response_format`` becomes the chat payload's
output format (the chat runtime holds the answer to it by constrained decoding), and a
tool call the model must make (``tool_choice`` naming a function, or ``"required"``)
becomes an answer held to the tool's parameters plus a line in the prompt; the answer
comes back as OpenAI's ``tool_calls``. ``tool_choice: "auto"`` (the model may answer
in text or call) is refused by name: no grammar here lets the model choose."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from services.common.chat import OutputFormat
from services.common.codec import summarise
from services.gateway.errors import InvalidRequestError, UnsupportedFeatureError

FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: FunctionName
    description: str | None = None
    parameters: dict[str, JsonValue] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["function"]
    function: FunctionDef


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    description: str | None = None
    schema_: dict[str, JsonValue] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


@dataclass(frozen=True)
class ToolPlan:
    """The call the model must make: one tool (its answer is the arguments) or one of
    several (its answer is ``{"name": ..., "arguments": ...}``)."""

    tools: tuple[FunctionDef, ...]

    @property
    def forced(self) -> bool:
        return len(self.tools) == 1

    def schema(self) -> dict[str, JsonValue]:
        if self.forced:
            return _parameters(self.tools[0])
        return {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": _parameters(t)},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for t in self.tools
            ]
        }

    def hint(self) -> str:
        """The prompt line that tells the model what it is filling in."""
        listed = "; ".join(
            f"{t.name}" + (f" ({t.description})" if t.description else "") for t in self.tools
        )
        if self.forced:
            return f"Call the function {listed}. Reply with its arguments as a JSON object."
        return (
            f"Call one of these functions: {listed}. Reply with a JSON object holding the "
            'function\'s "name" and its "arguments".'
        )

    def call(self, text: str) -> tuple[str, str] | None:
        """(name, arguments as JSON text) from the model's answer; None when the answer
        is not a whole call (cut by max_tokens or the deadline)."""
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if self.forced:
            return self.tools[0].name, json.dumps(doc)
        if isinstance(doc, dict) and isinstance(doc.get("name"), str) and "arguments" in doc:
            return doc["name"], json.dumps(doc["arguments"])
        return None


def _parameters(tool: FunctionDef) -> dict[str, JsonValue]:
    return tool.parameters if tool.parameters is not None else {"type": "object"}


def output_plan(
    response_format: JsonValue, tools: JsonValue, tool_choice: JsonValue
) -> tuple[OutputFormat | None, ToolPlan | None]:
    """What the answer is held to, and the tool call to make (None, None: free text)."""
    plan = tool_plan(_tools(tools), tool_choice)
    form = _format(response_format)
    if plan is not None and form is not None:
        raise UnsupportedFeatureError(
            "response_format cannot be combined with a tool call", "response_format"
        )
    if plan is not None:
        return OutputFormat(json_schema=plan.schema()), plan
    return form, None


def _format(value: JsonValue) -> OutputFormat | None:
    if value is None:
        return None
    try:
        form = ResponseFormat.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body.response_format")) from None
    if form.type == "text":
        return None
    if form.type == "json_schema":
        if form.json_schema is None or form.json_schema.schema_ is None:
            raise InvalidRequestError("body.response_format.json_schema.schema: is required")
        return OutputFormat(json_schema=form.json_schema.schema_)
    return OutputFormat()


def _tools(value: JsonValue) -> list[FunctionDef]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError("body.tools: must be a list")
    defs: list[FunctionDef] = []
    for i, item in enumerate(value):
        if not (isinstance(item, dict) and item.get("type") == "function"):
            raise UnsupportedFeatureError(f"tools[{i}]: only function tools are supported", "tools")
        try:
            defs.append(ToolDef.model_validate(item).function)
        except ValidationError as exc:
            raise InvalidRequestError(summarise(exc, root=f"body.tools[{i}]")) from None
    return defs


def tool_plan(tools: list[FunctionDef], choice: JsonValue) -> ToolPlan | None:
    """The call ``tool_choice`` asks for over ``tools``; None when no call is made."""
    if choice == "none" or (not tools and choice in (None, "auto")):
        return None  # no call: "auto" over no tools can call none
    if not tools:
        raise InvalidRequestError("body.tool_choice: needs tools")
    if choice is None or choice == "auto":
        raise UnsupportedFeatureError(
            'tool_choice "auto" (the default with tools) is not supported: set "required" or '
            'name the function ({"type": "function", "function": {"name": ...}})',
            "tool_choice",
        )
    if choice == "required":
        return ToolPlan(tuple(tools))
    name = _named(choice)
    chosen = [t for t in tools if t.name == name]
    if not chosen:
        raise InvalidRequestError(f"body.tool_choice: no tool is named {name!r}")
    return ToolPlan((chosen[0],))


def _named(choice: JsonValue) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and name):
        raise UnsupportedFeatureError(
            'tool_choice must be "none", "required" or {"type": "function", "function": '
            '{"name": ...}}',
            "tool_choice",
        )
    return str(name)

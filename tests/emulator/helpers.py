"""Request builders and schemas shared by the emulator's tests."""

from __future__ import annotations

from typing import Any

MODEL = "claude-haiku-4-5"


def request(custom_id: str, text: str = "Summarize the history of tea.", **params: Any) -> dict:
    """One batch request with the params a typical dsbatch job sends."""
    body = {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
    body.update(params)
    return {"custom_id": custom_id, "params": body}


def requests(n: int, prefix: str = "r", **params: Any) -> list[dict]:
    return [
        request(f"{prefix}{i}", f"Row {i}: tell me about item number {i}.", **params)
        for i in range(n)
    ]


def json_schema_params(schema: dict) -> dict:
    return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}


def forced_tool_params(schema: dict, name: str = "record") -> dict:
    return {
        "tools": [{"name": name, "description": "Record the answer.", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": name},
    }


LABEL_SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["topic", "confidence", "tags"],
    "additionalProperties": False,
}

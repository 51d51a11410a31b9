"""Request builders and schemas shared by the emulator's tests."""

from __future__ import annotations

from typing import Any

MODEL = "claude-haiku-4-5"


# Typed Any: tests also send what the SDK's TypedDicts forbid, to see the API refuse it.
def request(custom_id: str, text: str = "Summarize the history of tea.", **params: Any) -> Any:
    """One batch request with the params a typical dsbatch job sends."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


def requests(n: int, prefix: str = "r", **params: Any) -> list[Any]:
    return [
        request(f"{prefix}{i}", f"Row {i}: tell me about item number {i}.", **params)
        for i in range(n)
    ]


def json_schema_params(schema: dict[str, Any]) -> dict[str, Any]:
    return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}


def forced_tool_params(schema: dict[str, Any], name: str = "record") -> dict[str, Any]:
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


def result_lines(client: Any, batch_id: str) -> list[Any]:
    """The SDK's parsed results lines (typed Any: tests know which result kind they expect)."""
    return list(client.messages.batches.results(batch_id))


def results_by_id(client: Any, batch_id: str) -> dict[str, Any]:
    """custom_id -> the SDK's parsed ``result`` of that request."""
    return {line.custom_id: line.result for line in result_lines(client, batch_id)}

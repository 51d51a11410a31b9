"""Reading a request's params: what it asks of the answer (a structure, a tool, thinking)."""

from __future__ import annotations

from typing import Any

from dsbatch._models import ModelFacts, model_facts

__all__ = ["facts_of", "forces_tool", "output_format", "structured_kind", "thinking_type"]


def facts_of(params: dict[str, Any]) -> ModelFacts | None:
    """What dsbatch knows of the request's model (None for a model it does not know)."""
    model = params.get("model")
    return model_facts(model) if isinstance(model, str) else None


def output_format(params: dict[str, Any]) -> tuple[str, Any] | None:
    """(where, format) of the requested output format: ``output_config.format``, or the
    ``output_format`` the API still accepts for a transition period."""
    output_config = params.get("output_config")
    if isinstance(output_config, dict) and output_config.get("format") is not None:
        return "output_config.format", output_config["format"]
    if params.get("output_format") is not None:
        return "output_format", params["output_format"]
    return None


def forces_tool(params: dict[str, Any]) -> bool:
    """Whether ``tool_choice`` forces a tool call (``tool`` or ``any``)."""
    choice = params.get("tool_choice")
    return isinstance(choice, dict) and choice.get("type") in ("tool", "any")


def structured_kind(params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """("json_schema", schema) or ("tool", tool) when the answer must be JSON, else None."""
    found = output_format(params)
    if found is not None:
        fmt = found[1]
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            return "json_schema", schema if isinstance(schema, dict) else {}
    choice = params.get("tool_choice")
    tools = params.get("tools")
    if isinstance(choice, dict) and isinstance(tools, list):
        if choice.get("type") == "tool":
            for tool in tools:
                if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
                    return "tool", tool
        elif choice.get("type") == "any":
            for tool in tools:
                if isinstance(tool, dict) and "input_schema" in tool:
                    return "tool", tool
    return None


def thinking_type(params: dict[str, Any]) -> str | None:
    """ "enabled" or "adaptive" when the answer starts with thinking, else None: asked for by
    ``thinking.type``, or always on for the models that always think."""
    thinking = params.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind in ("enabled", "adaptive"):
        return str(kind)
    facts = facts_of(params)
    return "adaptive" if facts is not None and facts.always_thinking else None

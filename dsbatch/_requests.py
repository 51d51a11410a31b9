"""What the API would refuse, refused before anything is sent: one table of rules.

A batch request the API refuses costs a day: the batch is created, and its requests come back
``errored`` (``invalid_request_error``) once it ends. Every request is checked here first, at
render time, the row named by the caller. ``RULES`` is the whole list, in the order they are
tried, each with the API versions or models it applies to and the API's own words where known
(from the API reference, the installed SDK's request types, and the models overview); the
user-facing list, with what each case prints, is docs/requests.md. The shapes (parameter
names, value types, content blocks) come from the installed ``anthropic`` SDK
(``_sdk_schema``), not from a list kept here; the only names added by hand are those the SDK's
types dropped while an API version still takes them (``temperature``, ``top_p``, ``top_k``
under ``2023-06-01``). Per-model facts come from
``_models.model_facts``; a model it does not know meets only the rules of every model.

Only what varies per row is checked per row: ``RequestChecker`` remembers the values that came
from the job's own settings (``model=``, ``params=``, ``response_format``) once they passed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dsbatch._errors import PromptError
from dsbatch._images import IMAGE_BLOCK_HINT, is_image
from dsbatch._limits import API_VERSION_2026, API_VERSION_LEGACY
from dsbatch._models import OUTPUT_300K_BETA, ModelFacts, model_facts
from dsbatch._sdk_schema import (
    Check,
    SchemaProblem,
    batch_header_params,
    compile_type,
    content_block_check,
    describe_value,
    nearest,
    request_fields,
)

__all__ = ["MAX_TOKENS_BOUND", "RULES", "RequestChecker", "Rule"]

# The highest max_tokens sent for a model whose output limit dsbatch does not know (a model
# newer than its table, or not a Claude id): above every output limit the API has today
# (300,000 with the output-300k beta), with room for a newer model's larger one. A value like
# 10**30 is a mistake, not a limit.
MAX_TOKENS_BOUND = 1_000_000
_THINKING_MIN_BUDGET = 1024
_SAMPLING = frozenset({"temperature", "top_p", "top_k"})
_THINKING = frozenset({"thinking"})
_TOOL_CHOICE = frozenset({"tool_choice"})
# The SDK's types dropped these, but API version 2023-06-01 still takes them (the OpenAPI spec's
# CreateMessageParams has them): added back under that version only.
_LEGACY_PARAMS = {
    "temperature": compile_type(float),
    "top_p": compile_type(float),
    "top_k": compile_type(int),
}
_ROLES = ("user", "assistant")
_FORCED = ("tool", "any")
_KEEP_VERSION = (
    "or keep it with a client made with anthropic.Anthropic(default_headers="
    f"{{'anthropic-version': '{API_VERSION_LEGACY}'}})"
)


@dataclass
class _Context:
    """What a rule knows besides the params: the job's settings, and the row's model."""

    api_version: str
    betas: tuple[str, ...]
    beta_types: bool  # checked against the SDK's beta request types
    tool_mode: bool  # response_format forces a tool call (structured_output="tool")
    fields: Mapping[str, Any]  # param name -> its check (the SDK's, plus the version's)
    checked: dict[str, Any]  # param name -> the job's own value, already checked
    blocks: dict[str, Any]  # role -> the check of its content blocks (the SDK's)
    headers: tuple[str, ...]  # params the SDK sends as headers of the whole batch create
    block_rules: tuple[Callable[[str, Mapping[str, Any], _Context], str | None], ...] = ()
    facts: ModelFacts | None = None  # of the row's model; None when not known


@dataclass(frozen=True)
class Rule:
    """One thing the API refuses: where it applies, the API's words, and its check.

    ``check(params, ctx)`` looks at a whole request; ``block(role, block, ctx)`` at each content
    block of a message (called by the walk of the "messages" rule, which checked the block's
    shape first; its problem is put after the block's place). A rule with ``needs`` runs only on
    requests with one of those params.
    """

    name: str
    applies: str
    api_says: str
    check: Callable[[dict[str, Any], _Context], str | None] | None = None
    block: Callable[[str, Mapping[str, Any], _Context], str | None] | None = None
    since: str | None = None  # the first API version it applies to (None: every version)
    needs: frozenset[str] = frozenset()


# -- the rules ---------------------------------------------------------------------------------


def _stream(params: dict[str, Any], ctx: _Context) -> str | None:
    # The API takes "stream": false (what the SDK's non-streaming type allows); a batch never
    # streams, so anything else is refused.
    if params.get("stream") is not False:
        return (
            "'stream' is not allowed in a batch request (a batch never streams): remove it, or "
            "give false"
        )
    return None


def _batch_setting(params: dict[str, Any], ctx: _Context) -> str | None:
    if "betas" in params:
        return (
            "'betas' is not a request parameter: pass betas=[...] to dsbatch.map (beta "
            "features apply to a whole batch, as its anthropic-beta header)"
        )
    for name in ctx.headers:
        if name not in params:
            continue
        header = "anthropic-" + name.replace("_", "-")
        return (
            f"{name!r} is a setting of the whole batch (the {header} header), not a request "
            f"parameter: remove it, and make the client with anthropic.Anthropic("
            f"default_headers={{'{header}': ...}})"
        )
    return None


def _sampling_model(params: dict[str, Any], ctx: _Context) -> str | None:
    facts = ctx.facts
    if facts is None or facts.accepts_sampling:
        return None
    for name in sorted(_SAMPLING & params.keys()):
        return (
            f"{params['model']} rejects {name!r} whatever the API version (the API says: "
            f"'`{name}` is deprecated for this model.'): remove it"
        )
    return None


def _sampling_version(params: dict[str, Any], ctx: _Context) -> str | None:
    for name in sorted(_SAMPLING & params.keys()):
        return (
            f"{name!r} is rejected by API version {ctx.api_version}, which this client "
            f"sends: remove it, {_KEEP_VERSION}"
        )
    return None


def _unknown_param(params: dict[str, Any], ctx: _Context) -> str | None:
    fields = ctx.fields
    for name in params:
        if name not in fields:
            types = "beta request types" if ctx.beta_types else "request types"
            beta = ""
            if not ctx.beta_types and name in request_fields(True):
                beta = " (its beta request types do: pass the beta's name in betas=[...])"
            return (
                f"unknown parameter {name!r}{nearest(name, fields)}: the API refuses it "
                f"('{name}: Extra inputs are not permitted'), and the installed anthropic "
                f"SDK's {types} do not have it{beta}"
            )
    return None


def _model(params: dict[str, Any], ctx: _Context) -> str | None:
    model = params.get("model")
    if not isinstance(model, str) or not model:
        return "no model: pass model=... or return 'model' from the prompt function"
    return None


def _max_tokens(params: dict[str, Any], ctx: _Context) -> str | None:
    value = params.get("max_tokens")
    if value == 0 and type(value) is int:
        return (
            "max_tokens is 0 (pre-warming the prompt cache), which a batch does not allow: "
            "give a positive number of tokens"
        )
    if type(value) is not int or value < 1:
        return f"max_tokens must be a positive integer, not {value!r}"
    return None


def _sdk_types(params: dict[str, Any], ctx: _Context) -> str | None:
    checked = ctx.checked
    for name, value in params.items():
        if name == "messages" or checked.get(name, _UNSET) is value:
            continue
        try:
            ctx.fields[name].check(value, name)
        except SchemaProblem as e:
            return str(e)
    return None


def _messages(params: dict[str, Any], ctx: _Context) -> str | None:
    messages = params.get("messages")
    if ctx.checked.get("messages", _UNSET) is messages:
        return None
    if not isinstance(messages, list) or not messages:
        return "no messages: the request needs at least one message"
    for i, message in enumerate(messages):
        problem = _message(i, message, ctx)
        if problem is not None:
            return problem
    return None


def _message(i: int, message: Any, ctx: _Context) -> str | None:
    if message.__class__ is not dict and not isinstance(message, Mapping):
        return f"messages[{i}] must be a dict with 'role' and 'content'"
    role = message.get("role")
    if role == "system":
        return (
            f"messages[{i}] has role 'system': pass system=... to dsbatch.map or return "
            "'system' in the params dict (dsbatch sends instructions as the request's system "
            "parameter, never as a message)"
        )
    if role not in _ROLES:
        return f"messages[{i}] has role {role!r}; it must be 'user' or 'assistant'"
    two = len(message) == 2 and "content" in message  # role and content: nothing else
    for key in () if two else message:
        if key not in ("role", "content"):
            return (
                f"messages[{i}] has an unknown key {key!r}{nearest(key, ('role', 'content'))}, "
                f"which the API refuses ('{key}: Extra inputs are not permitted')"
            )
    content = message.get("content")
    if isinstance(content, str):
        if not content:
            return f"messages[{i}] has empty content"
        if content.isspace():
            return (
                f"messages[{i}] has content of whitespace only (the API says: 'messages: text "
                "content blocks must contain non-whitespace text')"
            )
        return None
    if not isinstance(content, list):
        if is_image(content):
            return f"messages[{i}] content is a PIL image: {IMAGE_BLOCK_HINT}"
        return (
            f"messages[{i}] content must be a str or a list of content blocks, "
            f"not {type(content).__name__}"
        )
    if not content:
        return f"messages[{i}] has an empty content list"
    block_check = ctx.blocks.get(role)
    for j, block in enumerate(content):
        problem = _block(role, block, block_check, ctx)
        if problem is not None:
            # The block's place is spelled out only now: most rows have no problem.
            return problem.replace(_HERE, f"messages[{i}].content[{j}]")
    return None


# Stands for a block's place in a problem found in it (see _message).
_HERE = "\x00here\x00"


def _block(role: str, block: Any, block_check: Check | None, ctx: _Context) -> str | None:
    if (block.__class__ is not dict and not isinstance(block, Mapping)) or not isinstance(
        block.get("type"), str
    ):
        if is_image(block):
            return f"{_HERE} is a PIL image: {IMAGE_BLOCK_HINT}"
        return (
            f"{_HERE} must be a content block, a dict with a 'type' such as "
            f"{{'type': 'text', 'text': ...}}, not {describe_value(block)}"
        )
    if block_check is not None:
        try:
            block_check.check(block, _HERE)
        except SchemaProblem as e:
            if _holds_image(block):
                return f"{_HERE} holds a PIL image: {IMAGE_BLOCK_HINT}"
            return str(e)
    for rule in ctx.block_rules:
        problem = rule(role, block, ctx)
        if problem is not None:
            return f"{_HERE} {problem}"
    if block["type"] == "text":
        text = block["text"]
        if not text:
            return (
                f"{_HERE} is a text block with empty text (the API says: 'messages: text "
                "content blocks must be non-empty')"
            )
        if text.isspace():
            return (
                f"{_HERE} is a text block of whitespace only (the API says: 'messages: text "
                "content blocks must contain non-whitespace text')"
            )
    return None


def _holds_image(value: Any) -> bool:
    if is_image(value):
        return True
    if isinstance(value, Mapping):
        return any(_holds_image(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_image(v) for v in value)
    return False


def _prefill_whitespace(params: dict[str, Any], ctx: _Context) -> str | None:
    last = params["messages"][-1]
    if last["role"] != "assistant":
        return None
    content = last["content"]
    if isinstance(content, list):
        block = content[-1]
        if block["type"] != "text":
            return None
        content, where = block["text"], f"messages[{len(params['messages']) - 1}].content[-1]"
    else:
        where = f"messages[{len(params['messages']) - 1}]"
    if content != content.rstrip():
        return (
            f"{where}, the final assistant turn (a prefill), ends with whitespace, which the API "
            "refuses ('final assistant content cannot end with trailing whitespace'): strip it"
        )
    return None


def _assistant_document(role: str, block: Mapping[str, Any], ctx: _Context) -> str | None:
    if role == "assistant" and block["type"] == "document":
        return (
            "is a document block in an assistant message, which API version "
            f"{ctx.api_version} rejects: move it to a user message, {_KEEP_VERSION}"
        )
    return None


def _user_citations(role: str, block: Mapping[str, Any], ctx: _Context) -> str | None:
    if role == "user" and block["type"] == "text" and block.get("citations"):
        return (
            "is a user text block with citations, which API version "
            f"{ctx.api_version} rejects: drop the citations, {_KEEP_VERSION}"
        )
    return None


def _output_limit(params: dict[str, Any], ctx: _Context) -> str | None:
    facts = ctx.facts
    limit = None if facts is None else facts.output_limit(ctx.betas)
    if limit is None:
        return None
    max_tokens, model = params["max_tokens"], params["model"]
    if max_tokens <= limit:
        return None
    hint = ""
    wider = facts.output_limit((OUTPUT_300K_BETA,)) if facts is not None else None
    if wider is not None and limit < max_tokens <= wider:
        hint = f", or pass betas=['{OUTPUT_300K_BETA}'] to dsbatch.map (up to 300,000)"
    return (
        f"max_tokens {max_tokens} is above the output limit of {model}, which the API refuses "
        f"('max_tokens: {max_tokens} > {limit}, which is the maximum allowed number of output "
        f"tokens for {model}'): ask for at most {limit:,}{hint}"
    )


def _max_tokens_bound(params: dict[str, Any], ctx: _Context) -> str | None:
    max_tokens = params["max_tokens"]
    if max_tokens <= MAX_TOKENS_BOUND or (ctx.facts and ctx.facts.max_output):
        return None
    return (
        f"max_tokens {max_tokens} is above what any model can answer (dsbatch sends at most "
        f"{MAX_TOKENS_BOUND:,} for a model whose limit it does not know, like "
        f"{params['model']!r}): ask for the answer length you need"
    )


def _thinking(params: dict[str, Any]) -> str | None:
    """The thinking type a request asks for (``enabled``, ``adaptive``...), None without one."""
    thinking = params.get("thinking")
    return None if thinking is None else thinking.get("type")  # a dict: the SDK's types say


def _thinking_manual(params: dict[str, Any], ctx: _Context) -> str | None:
    facts = ctx.facts
    if facts is None or _thinking(params) != "enabled" or "enabled" in facts.thinking_forms:
        return None
    return (
        f"{params['model']} refuses thinking.type 'enabled' (the API says: 'thinking.type."
        "enabled is not supported for this model. Use thinking.type.adaptive and "
        "output_config.effort'): ask for {'type': 'adaptive'} and set output_config.effort"
    )


def _thinking_adaptive(params: dict[str, Any], ctx: _Context) -> str | None:
    facts = ctx.facts
    if facts is None or _thinking(params) != "adaptive" or "adaptive" in facts.thinking_forms:
        return None
    return (
        f"{params['model']} knows only manual thinking: ask for {{'type': 'enabled', "
        "'budget_tokens': N} (N at least 1,024 and below max_tokens) instead of 'adaptive'"
    )


def _thinking_budget(params: dict[str, Any], ctx: _Context) -> str | None:
    if _thinking(params) != "enabled":
        return None
    budget, max_tokens = params["thinking"]["budget_tokens"], params["max_tokens"]
    if budget < _THINKING_MIN_BUDGET:
        return (
            f"thinking.budget_tokens is {budget:,}, which the API refuses ('thinking.enabled."
            "budget_tokens: Input should be greater than or equal to 1024'): give at least 1,024"
        )
    if budget >= max_tokens:
        return (
            f"thinking.budget_tokens ({budget:,}) is not below max_tokens ({max_tokens:,}), which "
            "the API refuses ('`max_tokens` must be greater than `thinking.budget_tokens`'): "
            "thinking counts toward max_tokens, so raise max_tokens above the budget"
        )
    return None


def _thinking_forced_tool(params: dict[str, Any], ctx: _Context) -> str | None:
    choice = params.get("tool_choice")
    if not isinstance(choice, Mapping) or choice.get("type") not in _FORCED:
        return None
    thinking = _thinking(params)
    always = ctx.facts is not None and ctx.facts.always_thinking
    if thinking in (None, "disabled") and not always:
        return None
    said = "the API says: 'Thinking may not be enabled when tool_choice forces tool use'"
    if ctx.tool_mode:
        fix = "use structured_output='native' (the default), which forces no tool"
    else:
        fix = "use tool_choice {'type': 'auto'}"
    if thinking in (None, "disabled"):
        return (
            f"{params['model']} always thinks, and the API refuses a forced tool call with "
            f"thinking ({said}): {fix}"
        )
    if ctx.tool_mode:
        what = "structured_output='tool' forces a tool call"
    else:
        what = f"tool_choice {dict(choice)!r} forces a tool call"
    return f"{what} while thinking is on ({said}): {fix}, or drop thinking"


def _tool_choice_tool(params: dict[str, Any], ctx: _Context) -> str | None:
    choice = params.get("tool_choice")
    if not isinstance(choice, Mapping) or choice.get("type") not in _FORCED:
        return None
    tools = params.get("tools") or []
    if not tools:
        return f"tool_choice {dict(choice)!r} forces a tool call, but the request has no tools"
    names = [t.get("name") for t in tools if isinstance(t, Mapping)]
    if choice["type"] == "tool" and choice["name"] not in names:
        return (
            f"tool_choice names the tool {choice['name']!r}{nearest(choice['name'], names)}, "
            f"which is not in tools (they are {', '.join(map(repr, names))})"
        )
    return None


_2026 = f"API version {API_VERSION_2026} and later"
RULES: tuple[Rule, ...] = (
    Rule("stream", "every version", "", _stream, needs=frozenset({"stream"})),
    Rule("batch-setting", "every version: betas, and the SDK's batch-wide header params", "",
         _batch_setting),
    Rule("sampling-model", "models that reject sampling params (Opus 4.7+, the 5 family)",
         "`temperature` is deprecated for this model.", _sampling_model, needs=_SAMPLING),
    Rule("sampling-version", _2026, "", _sampling_version, since=API_VERSION_2026,
         needs=_SAMPLING),
    Rule("unknown-param", "every version: the SDK's request params (+ temperature, top_p, "
         "top_k under 2023-06-01)", "<name>: Extra inputs are not permitted", _unknown_param),
    Rule("model", "every version", "model: Field required", _model),
    Rule("max-tokens", "every version (0 pre-warms the cache, not allowed in a batch)", "",
         _max_tokens),
    Rule("sdk-types", "every version: each param's value against the SDK's request types", "",
         _sdk_types),
    Rule("messages", "every version: roles, content, content blocks (the SDK's types), empty "
         "or whitespace-only text", "messages: text content blocks must be non-empty; "
         "messages: text content blocks must contain non-whitespace text", _messages),
    Rule("prefill-whitespace", "every version",
         "final assistant content cannot end with trailing whitespace", _prefill_whitespace),
    Rule("assistant-document", _2026, "", block=_assistant_document, since=API_VERSION_2026),
    Rule("user-citations", _2026, "", block=_user_citations, since=API_VERSION_2026),
    Rule("output-limit", "models of dsbatch's table (the output-300k beta where supported)",
         "max_tokens: N > M, which is the maximum allowed number of output tokens for <model>",
         _output_limit),
    Rule("max-tokens-bound", f"models whose limit is not known: at most {MAX_TOKENS_BOUND:,}",
         "", _max_tokens_bound),
    Rule("thinking-manual", "the Claude 5 family and Opus 4.7+",
         "thinking.type.enabled is not supported for this model. Use thinking.type.adaptive "
         "and output_config.effort", _thinking_manual, needs=_THINKING),
    Rule("thinking-adaptive", "Haiku 4.5, Sonnet 4.5, Opus 4.5 (manual thinking only)", "",
         _thinking_adaptive, needs=_THINKING),
    Rule("thinking-budget", "every model (manual thinking)",
         "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024; "
         "`max_tokens` must be greater than `thinking.budget_tokens`", _thinking_budget,
         needs=_THINKING),
    Rule("thinking-forced-tool", "every model; always-thinking models (Fable 5.1, Opus 5.5) "
         "even without a thinking param",
         "Thinking may not be enabled when tool_choice forces tool use", _thinking_forced_tool,
         needs=_TOOL_CHOICE),
    Rule("tool-choice-tool", "every version", "", _tool_choice_tool, needs=_TOOL_CHOICE),
)  # fmt: skip

_UNSET = object()


@functools.lru_cache(maxsize=64)
def _facts(model: str) -> ModelFacts | None:
    return model_facts(model)


class RequestChecker:
    """The rules of one job's requests; the job's own settings are checked once."""

    def __init__(
        self,
        *,
        api_version: str,
        betas: tuple[str, ...] = (),
        tool_mode: bool = False,
    ) -> None:
        beta_types = bool(betas)
        fields = dict(request_fields(beta_types))
        if api_version < API_VERSION_2026:
            fields.update(_LEGACY_PARAMS)
        self.context = _Context(
            api_version=api_version,
            betas=betas,
            beta_types=beta_types,
            tool_mode=tool_mode,
            fields=fields,
            checked={},
            blocks={role: content_block_check(beta_types, role) for role in _ROLES},
            headers=tuple(sorted(batch_header_params(beta_types))),
        )
        self.rules = tuple(r for r in RULES if r.since is None or api_version >= r.since)
        self._checks = tuple((r.check, r.needs) for r in self.rules if r.check is not None)
        self.context.block_rules = tuple(r.block for r in self.rules if r.block is not None)

    def check(self, params: dict[str, Any]) -> None:
        """Raise PromptError (the row is named by the caller) for the first rule broken."""
        ctx = self.context
        model = params.get("model")
        ctx.facts = _facts(model) if isinstance(model, str) else None
        keys = params.keys()
        for check, needs in self._checks:
            if needs and keys.isdisjoint(needs):
                continue
            problem = check(params, ctx)
            if problem is not None:
                raise PromptError(problem)

    def remember(self, settings: Mapping[str, Any], params: dict[str, Any]) -> None:
        """Note the job's own values that a checked request holds: later rows skip them."""
        for name, value in settings.items():
            if params.get(name, _UNSET) is value:
                self.context.checked[name] = value

"""Render: each row -> the prompt function -> Messages params -> canonical JSON -> custom_id.

Everything a row could get wrong is caught here, before any network call, with the row named:
what the API would refuse at create, and what it would only refuse hours later as an errored
result. The rules are ``_requests.RULES``; this module only builds the requests (PIL images in
messages become base64 image blocks, ``_images``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

import xxhash
from datasets import Dataset

from dsbatch._bodies import Bodies
from dsbatch._compat import iter_rows
from dsbatch._conversation import conversation_turns
from dsbatch._errors import PromptError
from dsbatch._images import IMAGE_BLOCK_HINT, encode_images, is_image
from dsbatch._limits import API_VERSION_2026
from dsbatch._requests import RequestChecker

__all__ = [
    "CUSTOM_ID_PREFIX",
    "Rendered",
    "RequestShape",
    "canonical_json",
    "custom_id_for",
    "render_split",
    "sample_custom_id",
    "sample_suffix",
]

CUSTOM_ID_PREFIX = "dsb_"


def _not_json(value: Any) -> Any:
    if is_image(value):
        raise TypeError(
            f"a PIL image can only be a block of a message's content: {IMAGE_BLOCK_HINT}"
        )
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# One encoder, made once: json.dumps with options builds a new one on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_not_json
).encode


def canonical_json(params: Mapping[str, Any]) -> bytes:
    """The one byte string a request has: sorted keys, no spaces, UTF-8, no NaN."""
    return _CANONICAL(params).encode()


def custom_id_for(canonical: bytes, betas: Sequence[str] = ()) -> str:
    """Short prefix + xxh3_128 of the canonical params (and the batch's betas, which change
    what the request does): identical requests share one id."""
    h = xxhash.xxh3_128(canonical)
    if betas:
        h.update(b"\x00anthropic-beta:" + ",".join(betas).encode())
    return CUSTOM_ID_PREFIX + h.hexdigest()


def sample_custom_id(custom_id: str, sample: int) -> str:
    """The custom_id of answer ``sample`` to a request (``samples=k``): sample 0 is the request's
    own id, so one sample is exactly a plain run; sample j > 0 is that id + ``_s<j>``. The
    params sent are the same bytes: only the id differs, so each sample is bought once."""
    return custom_id + sample_suffix(sample) if sample else custom_id


def sample_suffix(sample: int) -> str:
    """What sample j > 0 adds to its request's custom_id."""
    return f"_s{sample}"


@dataclass(frozen=True)
class RequestShape:
    """What every request of a job is made of besides its row."""

    defaults: Mapping[str, Any]  # model, max_tokens, system, params: the prompt's answer wins
    additions: Mapping[str, Any] = field(default_factory=dict)  # from response_format
    api_version: str = API_VERSION_2026
    betas: tuple[str, ...] = ()
    # What places prompt-cache breakpoints on the part every text request shares (``_prefix``).
    mark: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def checker(self) -> RequestChecker:
        """The rules every request of the job is checked against."""
        return RequestChecker(
            api_version=self.api_version,
            betas=self.betas,
            tool_mode="tool_choice" in self.additions,
        )


@dataclass
class Rendered:
    """The requests of a job: per split, the custom_id of each row (None = skipped)."""

    row_custom_ids: dict[str, list[str | None]] = field(default_factory=dict)
    bodies: Bodies = field(default_factory=Bodies)  # custom_id -> canonical params
    labels: dict[str, str | None] = field(default_factory=dict)  # split -> its name in errors
    samples: int = 1  # requests per row (``sample_custom_id``)
    # The bytes before and after the messages of each text template rows were made from
    # (``_prefix`` reads what they share once).
    templates: list[tuple[bytes, bytes]] = field(default_factory=list)
    # How many of ``bodies`` were made from one of ``templates`` (all of them: ``_prefix`` then
    # knows each body's shared part without reading the bodies).
    from_template: int = 0

    @property
    def rows(self) -> int:
        return sum(len(ids) for ids in self.row_custom_ids.values())

    @property
    def first_row(self) -> FirstRows:
        """custom_id -> (split label, row index) of the first row that asked for it."""
        return FirstRows(self)


class FirstRows(Mapping[str, tuple[str | None, int]]):
    """custom_id -> (split label, row index) of the first row that asked for each request,
    found in the rows' custom_ids when asked (an error names the row): a million requests
    keep no tuple each while the job is prepared."""

    def __init__(self, rendered: Rendered) -> None:
        self._rendered = rendered

    def __getitem__(self, custom_id: str) -> tuple[str | None, int]:
        rendered = self._rendered
        base = custom_id
        if rendered.samples > 1:
            sample = _SAMPLE.fullmatch(custom_id)
            if sample is not None and 0 < int(sample[2]) < rendered.samples:
                base = sample[1]
        for split, ids in rendered.row_custom_ids.items():
            try:
                return rendered.labels.get(split), ids.index(base)
            except ValueError:
                continue
        raise KeyError(custom_id)

    def _every(self) -> dict[str, tuple[str | None, int]]:
        rendered = self._rendered
        every: dict[str, tuple[str | None, int]] = {}
        for split, ids in rendered.row_custom_ids.items():
            label = rendered.labels.get(split)
            for row, custom_id in enumerate(ids):
                if custom_id is not None:
                    for sample in range(rendered.samples):
                        every.setdefault(sample_custom_id(custom_id, sample), (label, row))
        return every

    def __iter__(self) -> Iterator[str]:
        return iter(self._every())

    def __len__(self) -> int:
        return len(self._every())


_SAMPLE = re.compile(r"(.+)_s([0-9]+)")


def render_split(
    rendered: Rendered,
    split: str,
    dataset: Dataset,
    prompt: Callable[..., Any],
    *,
    shape: RequestShape,
    with_indices: bool,
    label: str | None,
    samples: int = 1,
    text_only: bool = False,
    start: int = 0,
) -> None:
    """Render every row of one split into ``rendered``; ``label`` names the split in errors.
    ``samples`` requests are made of each (``sample_custom_id``); ``text_only`` refuses a
    request whose conversation has no text form (``_conversation``). ``start``: the index in
    its split of the dataset's first row (a shard's, ``_parallel``): rows are named, and
    passed to ``prompt`` with ``with_indices``, by their index in the split."""
    ids: list[str | None] = []
    bodies = rendered.bodies
    rendered.labels[split], rendered.samples = label, samples
    checker = shape.checker()
    template: _TextTemplate | None = None
    hexdigest = xxhash.xxh3_128_hexdigest
    for idx, row in enumerate(iter_rows(dataset), start):
        try:
            answer = prompt(row, idx) if with_indices else prompt(row)
        except Exception as e:
            raise PromptError(
                f"the prompt function raised {type(e).__name__}: {e}{_call_hint(e, with_indices)}",
                row=idx,
                split=label,
            ) from e
        if answer is None:
            ids.append(None)
            continue
        made = isinstance(answer, str)
        try:
            if made:
                # The common case: the shape is checked once, each row only for its text.
                if template is None:
                    template = _TextTemplate(shape, checker)
                    rendered.templates.append(template.parts)
                body = template.body(answer)
            else:
                params = _to_params(answer, shape, checker)
                if text_only:
                    conversation_turns(params)
                body = canonical_json(params)
        except PromptError as e:
            raise PromptError(str(e), row=idx, split=label) from None
        except RecursionError:
            raise PromptError(
                "the request is nested too deeply to be sent as JSON", row=idx, split=label
            ) from None
        except (TypeError, ValueError) as e:
            raise PromptError(f"the request is not valid JSON: {e}", row=idx, split=label) from e
        # custom_id_for, inlined: the hash of the body alone when the job has no betas.
        custom_id = (
            custom_id_for(body, shape.betas) if shape.betas else CUSTOM_ID_PREFIX + hexdigest(body)
        )
        if bodies.add(custom_id, body):
            rendered.from_template += made
            for sample in range(1, samples):
                bodies[sample_custom_id(custom_id, sample)] = body
                rendered.from_template += made
        ids.append(custom_id)
    rendered.row_custom_ids[split] = ids


def _call_hint(error: Exception, with_indices: bool) -> str:
    """A hint when calling the prompt function failed at the call itself (its signature)."""
    if not isinstance(error, TypeError) or error.__traceback__ is None:
        return ""
    if error.__traceback__.tb_next is not None:
        return ""  # raised inside the function: not about how it was called
    text = str(error)
    if not with_indices and "required positional argument" in text:
        return (
            " (dsbatch calls prompt(row); to get the row's index too, pass with_indices=True "
            "and it calls prompt(row, idx))"
        )
    if with_indices and "positional argument" in text and "were given" in text:
        return " (with_indices=True calls prompt(row, idx): add the idx parameter, or drop it)"
    return ""


class _TextTemplate:
    """The canonical JSON of a one-message request, with a hole where the message goes."""

    _HOLE = "\x00dsbatch-messages\x00"

    def __init__(self, shape: RequestShape, checker: RequestChecker) -> None:
        # The shape's own mistakes are named on the first row.
        params = _to_params("a text", shape, checker)
        if shape.mark is not None:
            params = shape.mark(params)
        skeleton = canonical_json({**params, "messages": self._HOLE})
        hole = json.dumps(self._HOLE).encode()
        if skeleton.count(hole) != 1:
            raise PromptError("the request's params hold dsbatch's own placeholder text")
        self._head, self._tail = skeleton.split(hole)
        self._shape, self._checker = shape, checker
        # The message around the text, joined to the head and tail once: [{"content":...,"role"..
        self._open = self._head + b'[{"content":'
        self._close = b',"role":"user"}]' + self._tail

    @property
    def parts(self) -> tuple[bytes, bytes]:
        """The bytes before and after the messages, the same in every request it makes."""
        return self._head, self._tail

    def body(self, text: str) -> bytes:
        if not text or text.isspace():
            # What the checker says of the same request.
            _to_params(text, self._shape, self._checker)
        # Byte for byte canonical_json(params): keys sorted ("content" < "role"), no spaces,
        # the text as JSONEncoder(ensure_ascii=False) writes a str (without its walk of a list
        # and a dict).
        return self._open + encode_basestring(text).encode() + self._close


def _to_params(answer: Any, shape: RequestShape, checker: RequestChecker) -> dict[str, Any]:
    if isinstance(answer, str):
        params = {**shape.defaults, "messages": [{"role": "user", "content": answer}]}
    elif isinstance(answer, list):
        params = {**shape.defaults, "messages": encode_images(answer)}
    elif isinstance(answer, Mapping):
        params = {**shape.defaults, **answer}
        if isinstance(answer.get("messages"), list):
            params["messages"] = encode_images(answer["messages"])
    else:
        raise PromptError(
            "the prompt function must return a str, a list of messages, a dict of Messages "
            f"params or None, not {type(answer).__name__}"
        )
    if shape.additions:
        params = _with_structured_output(params, shape.additions)
    checker.check(params)
    # The job's own values are now known good: later rows skip checking them again.
    checker.remember(shape.defaults, params)
    checker.remember(shape.additions, params)
    return params


def _with_structured_output(params: dict[str, Any], additions: Mapping[str, Any]) -> dict[str, Any]:
    """The request with response_format's output_config or forced tool; a request that already
    asks for a structured answer (its own format, tools or tool_choice) is refused, while other
    output_config settings (e.g. effort) are kept."""
    own = params.get("output_config")
    clash: list[str] = [k for k in ("tools", "tool_choice") if k in params]
    if isinstance(own, Mapping) and "format" in own:
        clash.append("output_config.format")
    elif own is not None and not isinstance(own, Mapping):
        clash.append("output_config")
    if clash:
        raise PromptError(
            f"the request already has {', '.join(map(repr, clash))}, and response_format asks "
            "for the structured answer itself: drop one of them"
        )
    merged = {**params, **additions}
    if isinstance(own, Mapping) and "output_config" in additions:
        merged["output_config"] = {**own, **additions["output_config"]}
    return merged

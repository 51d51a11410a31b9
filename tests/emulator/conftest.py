"""Fixtures for the emulator's tests: a fresh emulator, request builders, the OpenAPI spec."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsbatch.testing import Emulator


def _spec_path() -> Path:
    """The spec named by ``DSBATCH_OPENAPI_SPEC``, else beside the project (``../shared``), or
    beside a folder of worktrees holding it (``../../shared``)."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [
        folder / "shared" / "reference" / "anthropic-openapi.json"
        for folder in (repo.parent, repo.parent.parent)
    ]
    if os.environ.get("DSBATCH_OPENAPI_SPEC"):
        candidates.insert(0, Path(os.environ["DSBATCH_OPENAPI_SPEC"]))
    return next((path for path in candidates if path.is_file()), candidates[0])


SPEC_PATH = _spec_path()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


class SpecValidators:
    """jsonschema validators for the OpenAPI document's component schemas."""

    def __init__(self, document: dict) -> None:
        from jsonschema import Draft202012Validator, FormatChecker
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        uri = "urn:anthropic-openapi"
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry = Registry().with_resource(uri, resource)
        self._uri = uri
        self._cls = Draft202012Validator
        self._format_checker = FormatChecker()
        self._cache: dict[str, Any] = {}

    def validate(self, name: str, instance: Any) -> None:
        """Raise jsonschema.ValidationError unless ``instance`` is a valid ``name``."""
        if name not in self._cache:
            schema = {"$ref": f"{self._uri}#/components/schemas/{name}"}
            self._cache[name] = self._cls(
                schema, registry=self._registry, format_checker=self._format_checker
            )
        self._cache[name].validate(instance)


@pytest.fixture(scope="session")
def spec_document() -> dict[str, Any]:
    """The official OpenAPI document, as parsed JSON."""
    if not SPEC_PATH.is_file():
        pytest.skip(
            "../shared/reference/anthropic-openapi.json not found: "
            "the OpenAPI spec lives beside the project, not in it"
        )
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return document


@pytest.fixture(scope="session")
def spec(spec_document: dict[str, Any]) -> SpecValidators:
    return SpecValidators(spec_document)

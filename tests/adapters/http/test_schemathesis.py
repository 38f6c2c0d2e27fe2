"""Property-based tests of the whole HTTP API from its own OpenAPI document (schemathesis).

A real uvicorn server on 127.0.0.1 serves a registered model; schemathesis generates requests
for every operation in ``/api/openapi.json`` (valid ones and, through the negative phases, invalid
ones) and checks that none answers 5xx and that each answer matches the schema documented for it.
The run is bounded (a fixed number of examples per operation, derandomised) so CI stays short.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from support import running_uvicorn
from test_api import make_settings, register_model

schemathesis = pytest.importorskip("schemathesis")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
)

#: per operation; ~20 operations, so a few hundred requests in all
EXAMPLES = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, trained_model: Path) -> Iterator[tuple[str, str]]:
    """A real uvicorn server on 127.0.0.1 with one registered model: (base URL, model id)."""
    from photolabel.adapters.http.app import create_app

    tmp = tmp_path_factory.mktemp("schemathesis")
    model_id = register_model(tmp / "data", trained_model)
    with running_uvicorn(create_app(make_settings(tmp, cache_dir))) as base_url:
        yield base_url, model_id


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_5xx_and_answers_match_the_schema(served: tuple[str, str], mode: GenerationMode) -> None:
    """Every operation, EXAMPLES generated requests each; half of those with a ``key`` path parameter
    name the registered model, so predictions run for real. (pytest 9 breaks schemathesis's own pytest
    plugin, so the operations are walked here with hypothesis directly.)"""
    base_url, model_id = served
    api_schema = schemathesis.openapi.from_url(f"{base_url}/api/openapi.json")
    failures: list[str] = []
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        strategy = operation.as_strategy(generation_mode=mode)
        if "{key}" in operation.path and operation.method.upper() != "DELETE":  # keep the model for the others
            strategy = st.tuples(strategy, st.booleans()).map(lambda pair: _with_model(*pair, model_id))

        try:
            _exercise(strategy, operation.label, seen)
        except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(exc)[:3000]}")
    print(sorted(seen.items()))
    assert not failures, "\n\n".join(failures)
    # the requests reached the handlers, not only the router's 404
    assert any(status < 300 for (label, status) in seen if "{key}" in label), seen


def _exercise(strategy: Any, label: str, seen: collections.Counter[tuple[str, int]]) -> None:
    @given(case=strategy)
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call_and_validate(
            timeout=60, checks=(not_a_server_error, response_schema_conformance, content_type_conformance))
        seen[(label, response.status_code)] += 1

    check()


def _with_model(case: Any, use_model: bool, model_id: str) -> Any:
    if use_model and case.path_parameters is not None:
        case.path_parameters = {**case.path_parameters, "key": model_id}
    return case

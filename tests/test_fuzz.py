"""Fuzzing of every operation in the OpenAPI schema against a real server: no request gets a 5xx.

schemathesis generates requests from the server's own /openapi.json, valid and invalid
ones, and sends them with the admin API key. The server has its own home, because the
fuzzer registers models, creates users and keys and leaves them behind.

Each operation gets its own Hypothesis run through ``APIOperation.as_strategy``.
schemathesis's pytest loader for a schema that comes from a fixture
(``schemathesis.pytest.from_fixture``) cannot be used: with schemathesis 4.32.5 and
pytest 9.2 it fails before the first request, because it reads ``Function._nodeid``,
which pytest 9.2 no longer has.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import ADMIN_KEY, ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.e2e

# About 40 operations with this many examples each keep the fuzzing under a minute on 2 cores.
EXAMPLES_PER_OPERATION = 60
REQUEST_TIMEOUT = 30.0
AUTHORIZATION = {"Authorization": f"Bearer {ADMIN_KEY}"}
REVOKE_KEY = ("DELETE", "/api/keys/{key_id}")


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Hypothesis writes a cache to .hypothesis/ in the working directory, which is the
    # repository root here, unless set_hypothesis_home_dir names another directory.
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("fuzz-home"), free_port())
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def admin_key_id(fuzzed_server: ServerProcess) -> int:
    with fuzzed_server.client() as client:
        keys: list[dict[str, Any]] = client.get("/api/keys").json()
    return next(key["id"] for key in keys if ADMIN_KEY.startswith(key["prefix"]))


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json", headers=AUTHORIZATION,
                                         timeout=REQUEST_TIMEOUT)


def fuzz_operation(operation: schemathesis.APIOperation, admin_key_id: int) -> None:
    """Send valid and invalid requests for one operation, and raise on the first 5xx after shrinking it."""
    cases = st.one_of(operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
                      operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def send(case: schemathesis.Case) -> None:
        # Revoking the key that the fuzzer itself sends would turn every later request into
        # a 401, so that one key id is skipped. Every other id, valid or not, is still sent.
        if (case.method, case.path) == REVOKE_KEY:
            assume(str((case.path_parameters or {}).get("key_id")) != str(admin_key_id))
        case.call_and_validate(headers=AUTHORIZATION, checks=[not_a_server_error], timeout=REQUEST_TIMEOUT)

    send()


def test_no_operation_returns_server_error(api_schema: OpenApiSchema, admin_key_id: int) -> None:
    failures = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz_operation(operation, admin_key_id)
        # FailureGroup, the 5xx report, is a BaseExceptionGroup. Any other error, such as a
        # Hypothesis health check, is collected too, so that every operation is fuzzed.
        except (FailureGroup, Exception) as error:  # noqa: BLE001
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)


def test_operations_were_fuzzed(api_schema: OpenApiSchema) -> None:
    # Guards against a schema that loads with no operations, which would make the test above vacuous.
    assert len(list(api_schema.get_all_operations())) >= 30


# The two tests below run after the fuzzing in this module and check what it left behind.


def test_health_check_after_fuzzing(fuzzed_server: ServerProcess) -> None:
    assert httpx.get(f"{fuzzed_server.url}/healthz", timeout=REQUEST_TIMEOUT).status_code == 200


def test_api_call_after_fuzzing(fuzzed_server: ServerProcess) -> None:
    with fuzzed_server.client() as client:
        assert client.get("/api/users/me").status_code == 200

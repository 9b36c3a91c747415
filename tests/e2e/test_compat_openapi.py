"""The OpenAPI document against the live service: schemathesis generates
requests for every operation from ``/openapi.yaml`` and checks that no answer
is a server error and every answer matches what the document declares.

Bounded: a few examples per operation. Valid ones (what a generated client
would send), so chat routes do reach the CLI (through the fake upstream)
instead of stopping at validation; and invalid ones (a wrong type, a missing
field, a value out of range, an empty value), whose answer must be a
documented client error: never a 500, and never a success. Every operation
runs on a key of its own, so the destructive ones (DELETE) touch nothing
else."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MAX_EXAMPLES = 3
MAX_INVALID_EXAMPLES = 5


def _document() -> dict:
    """The document /openapi.yaml serves, built from the code (collection needs it before the server runs)."""
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE], max_examples=MAX_EXAMPLES)
invalid = schemathesis.openapi.from_dict(_document())
invalid.config.generation.update(modes=[GenerationMode.NEGATIVE], max_examples=MAX_INVALID_EXAMPLES)
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
# An invalid request must be refused (4xx), not read as something valid; only
# meaningful for invalid requests, so the valid ones keep CHECKS.
INVALID_CHECKS = [*CHECKS, checks.negative_data_rejection]


# POST /jobs: schemathesis cannot generate its multipart file parts (format: binary
# in an array); its JSON form is covered by tests/jobs/test_jobs_api.py.
@schema.exclude(method="POST", path="/jobs").parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_what_the_document_says(case, service, owner_key):
    case.call_and_validate(
        base_url=service.url,
        headers={"X-API-Key": owner_key.secret},
        timeout=90,
        checks=CHECKS,
    )


# Operations with nothing that could be made invalid are skipped by schemathesis.
@invalid.parametrize()
@settings(
    max_examples=MAX_INVALID_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_invalid_requests_get_a_documented_client_error(case, service, owner_key):
    case.call_and_validate(
        base_url=service.url,
        headers={"X-API-Key": owner_key.secret},
        timeout=90,
        checks=INVALID_CHECKS,
    )

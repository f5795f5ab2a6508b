"""schemathesis against the live server's own OpenAPI document: no input may cause a 5xx."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error


def test_no_request_makes_the_server_fail(fitted_anonymizer):
    # /fit is left out: each call retrains and recompiles (tested on its own elsewhere)
    schema = schemathesis.openapi.from_url(fitted_anonymizer.url + "/openapi.json")
    operations = [result.ok() for result in schema.exclude(path="/fit").get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /predict", "POST /fhe/keys", "PUT /fhe/keys/{key_id}/inputs/{party}"} <= labels
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()

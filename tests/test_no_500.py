"""No input a client can send makes the server answer 5xx."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metasrv.repo.storage import Storage
from tests.builders import add_marker_sets
from tests.conftest import AsgiClient
from tests.test_understandings import CAP_WERKZEUG, add_rules, register

ROUTES = [
    "/v1/projects/{a}",
    "/v1/projects/{a}/{b}",
    "/v1/projects/flask/{a}",
    "/v1/understandings/{a}",
    "/v1/markers/{a}",
    "/v1/markers/{a}/evaluate",
    "/v1/markers/lin/evaluate",
    "/v1/projects/flask/2.0.0",
    "/simple/{a}/",
    "/u/{a}/simple/flask/",
    "/u/pallets/simple/{a}/",
    "/at/{a}/simple/",
    "/at/{a}/files/flask/{b}",
    "/files/{a}/{b}",
    "/files/flask/{a}.metadata",
]
PARAMETERS = [
    "at",
    "since",
    "understanding",
    "markers",
    "marker",
    "requirement",
    "project",
    "format",
]
text = st.text(min_size=0, max_size=40)


@pytest.fixture
def rich(storage: Storage) -> Storage:
    """Give the repository an understanding and a marker set for the fuzzer to reach."""
    register(storage, "pallets", ".", "understandings/pallets")
    add_rules(storage, "understandings/pallets", "Flask", CAP_WERKZEUG)
    add_marker_sets(storage, {"lin": "linux"}, months=12)
    return storage


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    route=st.sampled_from(ROUTES),
    a=text,
    b=text,
    query=st.dictionaries(st.sampled_from(PARAMETERS), text, max_size=3),
    accept=st.sampled_from(
        [None, "*/*", "application/json", "text/html;q=x", "application/vnd.pypi.simple.v1+json"]
    ),
)
def test_any_path_and_query_gets_an_answer_below_500(
    client: AsgiClient,
    rich: Storage,
    route: str,
    a: str,
    b: str,
    query: dict[str, str],
    accept: str | None,
) -> None:
    url = route.format(a=quote(a, safe=""), b=quote(b, safe=""))
    if query:
        url += "?" + "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items())
    response = client.get(url, headers={"Accept": accept} if accept else None)
    assert response.status_code < 500, (url, response.text)
    if response.status_code >= 400:
        assert response.json()["error"]

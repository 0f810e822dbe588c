"""Error mapping: status x error_code -> class, every body shape, Retry-After."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.serving.errors import (
    AlreadyExists,
    Conflict,
    InvalidRequest,
    MalformedResponse,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServingError,
    Unauthenticated,
    Unavailable,
    UpdateInProgress,
    error_from_response,
    parse_error_body,
    parse_retry_after,
)


def _body(code: str | None, message: str = "something happened") -> bytes:
    payload: dict[str, str] = {"message": message}
    if code is not None:
        payload["error_code"] = code
    return json.dumps(payload).encode()


# (status, error_code, call, expected class, transient, retryable)
MAPPING = [
    (400, "INVALID_PARAMETER_VALUE", "update_config", InvalidRequest, False, False),
    (400, "BAD_REQUEST", "get_endpoint", InvalidRequest, False, False),
    (400, "INVALID_REQUEST", None, InvalidRequest, False, False),
    (400, None, None, InvalidRequest, False, False),
    (400, "INVALID_STATE", "update_config", UpdateInProgress, False, True),
    (400, "INVALID_STATE", "patch_tags", UpdateInProgress, False, True),
    # On an invocation INVALID_STATE is a stopped endpoint, not an update in flight.
    (400, "INVALID_STATE", "query", InvalidRequest, False, False),
    # Databricks sometimes says "does not exist" with a 400: the code wins.
    (400, "RESOURCE_DOES_NOT_EXIST", "get_endpoint", NotFound, False, False),
    (401, "UNAUTHENTICATED", None, Unauthenticated, False, False),
    (401, None, None, Unauthenticated, False, False),
    (403, "PERMISSION_DENIED", "update_config", PermissionDenied, False, False),
    (403, None, None, PermissionDenied, False, False),
    (404, "RESOURCE_DOES_NOT_EXIST", "get_endpoint", NotFound, False, False),
    (404, None, "export_metrics", NotFound, False, False),
    (405, None, None, InvalidRequest, False, False),
    (409, "RESOURCE_CONFLICT", "update_config", UpdateInProgress, False, True),
    (409, "RESOURCE_CONFLICT", None, UpdateInProgress, False, True),
    (409, None, "update_config", UpdateInProgress, False, True),
    (409, "ABORTED", "update_config", UpdateInProgress, False, True),
    (409, "ABORTED", "query", Conflict, False, False),
    (409, "RESOURCE_ALREADY_EXISTS", "create_endpoint", AlreadyExists, False, False),
    (409, "ALREADY_EXISTS", "create_endpoint", AlreadyExists, False, False),
    (429, "REQUEST_LIMIT_EXCEEDED", "get_endpoint", RateLimited, True, True),
    (429, "RESOURCE_EXHAUSTED", "query", RateLimited, True, True),
    (429, None, None, RateLimited, True, True),
    (400, "REQUEST_LIMIT_EXCEEDED", None, RateLimited, True, True),
    (500, "INTERNAL_ERROR", "get_endpoint", Unavailable, True, True),
    (500, None, "get_endpoint", Unavailable, True, True),
    (500, "TEMPORARILY_UNAVAILABLE", None, Unavailable, True, True),
    (500, "NOT_IMPLEMENTED", None, ServerError, False, False),
    # A model that fails to score answers 500: not resent, or a smoke check would never see it.
    (500, "INTERNAL_ERROR", "query", ServerError, False, False),
    (500, None, "query_served_model", ServerError, False, False),
    (503, "TEMPORARILY_UNAVAILABLE", "query", Unavailable, True, True),
    (429, "REQUEST_LIMIT_EXCEEDED", "query_served_model", RateLimited, True, True),
    (501, "NOT_IMPLEMENTED", None, ServerError, False, False),
    (501, None, None, ServerError, False, False),
    (502, None, None, Unavailable, True, True),
    (503, "TEMPORARILY_UNAVAILABLE", None, Unavailable, True, True),
    (503, None, None, Unavailable, True, True),
    (504, "DEADLINE_EXCEEDED", None, Unavailable, True, True),
    (505, None, None, ServerError, False, False),
    (302, None, None, MalformedResponse, False, False),
]


@pytest.mark.parametrize("row", MAPPING, ids=lambda row: f"{row[0]}-{row[1]}-{row[2]}")
def test_status_and_code_map_to_one_class(
    row: tuple[int, str | None, str | None, type[ServingError], bool, bool],
) -> None:
    status, code, call, cls, transient, retryable = row
    error = error_from_response(status, _body(code), endpoint="ep", call=call)
    assert type(error) is cls
    assert error.status == status
    assert error.error_code == code
    assert error.endpoint == "ep"
    assert error.transient is transient
    assert error.retryable is retryable
    assert error.message == "something happened"


@pytest.mark.parametrize(
    ("message", "call", "cls"),
    [
        (
            "Endpoint ads is stopped. Start it before updating its config.",
            "update_config",
            InvalidRequest,
        ),
        ("Endpoint ads is not stopped.", "start_endpoint", InvalidRequest),
        ("Endpoint ads has no config to stop.", "stop_endpoint", InvalidRequest),
        ("Endpoint ads has an update in progress.", "update_config", UpdateInProgress),
        ("Endpoint ads is currently updating.", "get_endpoint", UpdateInProgress),
        ("The endpoint cannot take this change now.", "update_config", UpdateInProgress),
    ],
)
def test_invalid_state_means_update_in_progress_unless_it_says_otherwise(
    message: str, call: str, cls: type[ServingError]
) -> None:
    error = error_from_response(400, _body("INVALID_STATE", message), call=call)
    assert type(error) is cls
    assert error.error_code == "INVALID_STATE"


def test_update_in_progress_detected_from_the_message_alone() -> None:
    body = _body(None, "Endpoint ads is currently updating. Wait for the update to complete.")
    error = error_from_response(409, body, call="get_endpoint")
    assert isinstance(error, UpdateInProgress)
    assert isinstance(error, Conflict)


@pytest.mark.parametrize(
    ("body", "content_type", "code", "message"),
    [
        (b'{"error_code":"X_Y","message":"m","details":[]}', "application/json", "X_Y", "m"),
        (b'{"error":"legacy message"}', "application/json", None, "legacy message"),
        (
            b'{"error":"invalid_client","error_description":"bad secret"}',
            "application/json",
            "invalid_client",
            "bad secret",
        ),
        (b'{"errorCode":"E_C","errorSummary":"summary"}', "application/json", "E_C", "summary"),
        (
            b'{"error":{"code":"NESTED","message":"inner"}}',
            "application/json",
            "NESTED",
            "inner",
        ),
        (
            b"RESOURCE_DOES_NOT_EXIST: no endpoint x",
            "text/plain",
            "RESOURCE_DOES_NOT_EXIST",
            "no endpoint x",
        ),
        (b"just some text", "text/plain", None, "just some text"),
        (
            b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            "text/html",
            None,
            "502 Bad Gateway",
        ),
        (
            b"<html><body><pre>TEMPORARILY_UNAVAILABLE: try later</pre></body></html>",
            "text/html",
            "TEMPORARILY_UNAVAILABLE",
            "try later",
        ),
        (b"", None, None, None),
        (b"   \n", "application/json", None, None),
        (b'{"error_code": "TRUNC', "application/json", None, '{"error_code": "TRUNC'),
        (b"[1, 2]", "application/json", None, "[1, 2]"),
        (b"\xff\xfegarbage", None, None, "\ufffd\ufffdgarbage"),
    ],
)
def test_every_error_body_shape_is_read(
    body: bytes, content_type: str | None, code: str | None, message: str | None
) -> None:
    assert parse_error_body(body, content_type) == (code, message)


def test_html_error_page_gives_typed_error_with_its_title() -> None:
    page = b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head></html>"
    error = error_from_response(
        503, page, headers={"content-type": "text/html"}, reason="Service Unavailable"
    )
    assert isinstance(error, Unavailable)
    assert error.message == "503 Service Unavailable"


def test_empty_body_uses_the_reason_phrase() -> None:
    error = error_from_response(404, b"", reason="Not Found", call="get_endpoint")
    assert isinstance(error, NotFound)
    assert error.message == "Not Found (empty body)"
    assert "get_endpoint" in str(error)
    assert "HTTP 404" in str(error)


def test_long_bodies_are_cut() -> None:
    error = error_from_response(500, b"x" * 10_000)
    assert len(error.message) <= 500


@pytest.mark.parametrize(
    ("header", "now", "expected"),
    [
        ("3", None, 3.0),
        ("0.5", None, 0.5),
        ("-4", None, 0.0),
        ("nan", None, None),
        ("soon", 0.0, None),
        (None, None, None),
        # An HTTP date ten seconds after `now`.
        ("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0, 10.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", None, None),
    ],
)
def test_retry_after_header(header: str | None, now: float | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=now) == expected


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_attached_to_429_and_503(status: int) -> None:
    error = error_from_response(status, b"", headers={"retry-after": "7"})
    assert isinstance(error, RateLimited | Unavailable)
    assert error.retry_after == 7.0


def test_errors_are_serving_errors_and_keep_their_cause_chain() -> None:
    for _status, code, call, cls, *_ in MAPPING:
        assert issubclass(cls, ServingError), (code, call)
    error = error_from_response(409, _body("RESOURCE_ALREADY_EXISTS"))
    assert isinstance(error, Conflict)
    assert "AlreadyExists" in repr(error)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["error_code", "message", "error", "errorCode", "detail"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=10,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    content_type=st.sampled_from([None, "application/json", "text/html", "text/plain"]),
    retry_after=st.one_of(st.none(), st.text(max_size=12)),
    call=st.sampled_from([None, "get_endpoint", "update_config", "query"]),
)
def test_any_response_maps_to_a_serving_error(
    status: int, body: bytes, content_type: str | None, retry_after: str | None, call: str | None
) -> None:
    headers = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if retry_after is not None:
        headers["retry-after"] = retry_after
    error = error_from_response(status, body, headers=headers, call=call, now=1_800_000_000.0)
    assert isinstance(error, ServingError)
    assert error.status == status
    assert error.message
    assert len(error.message) <= 500
    if error.transient:
        assert error.retryable

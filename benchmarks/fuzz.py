"""Property-based fuzzing of every endpoint, driven by the service's own OpenAPI schema.

``request_strategy(schema, ...)`` is a hypothesis strategy of whole HTTP requests: an operation drawn
from the schema, then its path, query, header and JSON body built by walking the operation's
schemas. Every value is either schema-shaped (often valid, with real catalogue ids so requests reach
the model) or hostile: huge and negative numbers, NaN and infinities, unicode including lone
surrogates, wrong types, missing and unknown fields, arrays past their limit, deeply nested JSON,
malformed or empty bodies, path-traversal ids and wrong API keys.

``problems(...)`` states the properties every answer must have: no 5xx, no traceback or server path
in the body, and every 4xx (but 429) says which field is wrong. The test (tests/service/test_fuzz.py)
and ``python -m benchmarks.reliability`` both use these, the first in-process, the second over HTTP.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

__all__ = ["FuzzRequest", "Raw", "encode", "operations", "problems", "request_strategy"]

#: Texts that must never appear in a response body: traceback markers and install paths.
LEAK_MARKERS = ("Traceback (most recent call last)", 'File "/', "site-packages", "/usr/lib/python")
#: A 4xx ``detail`` starts with the field (or header, or path) at fault: ``history[0]: ...``.
FIELD_PREFIX = re.compile(r"^[^\s:][^\s:]*:")
#: Hostile ids for path parameters and string fields.
#: percent-encoded characters one path or query parameter may take: HTTP clients refuse a URL over
#: 64 KiB (httpx raises InvalidURL before sending), and an operation has at most three such parameters
URL_PARAM_CHARS = 20_000
PATHS = ("../../etc/passwd", "/etc/passwd", "..", "%2e%2e%2f", "C:\\Windows\\win.ini", "~root/.ssh/id_rsa")


@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim by ``encode`` (deep nesting, NaN tokens, broken syntax)."""

    text: str


@dataclass(frozen=True)
class FuzzRequest:
    """One generated request, ready to send with any httpx-style client."""

    operation: str  # "POST /recommend"
    method: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, bytes] = field(default_factory=dict)  # Latin-1, as HTTP carries them
    content: bytes | None = None


def encode(value: Any) -> str:
    """JSON text of ``value``: ``Raw`` verbatim, NaN/Infinity as the tokens Python's parser accepts."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value)  # ensure_ascii: lone surrogates travel as \\ud800 escapes


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    parameters: list[dict[str, Any]]
    body: dict[str, Any] | None  # JSON schema of the body, if any

    @property
    def name(self) -> str:
        return f"{self.method.upper()} {self.path}"


def operations(schema: dict[str, Any]) -> list[Operation]:
    """Every operation of an OpenAPI document, in document order."""
    found = []
    for path, item in schema.get("paths", {}).items():
        for method, spec in item.items():
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            body = spec.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            found.append(Operation(method, path, list(spec.get("parameters", [])), body))
    return found


def _deref(node: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


@functools.cache
def _texts(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    hostile = st.one_of(
        st.sampled_from(PATHS),
        st.sampled_from(["\ud800", "a\udfffb", "\u202eevil", "\ufeff", "😀" * 3, "日本語"]),
        st.text(st.characters(), max_size=40),
        st.text(st.characters(codec="utf-8"), min_size=150, max_size=400),
        st.just("\x00"),
        st.just(""),
        st.just("x" * 20_000),
    )
    return st.one_of(st.sampled_from(known), st.sampled_from(known), hostile) if known else hostile


@functools.cache
def _hostile(known: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Values of the wrong size or the wrong type for any field."""
    scalars = st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30),
        st.sampled_from([-1, 0, 2**31, 2**63, -(2**63) - 1, 10**400]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        _texts(known),
    )
    deep = st.integers(50, 3000).map(lambda d: Raw("[" * d + "]" * d))
    deep_objects = st.integers(50, 1500).map(lambda d: Raw('{"a":' * d + "1" + "}" * d))
    nested = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    )
    return st.one_of(scalars, nested, deep, deep_objects, st.just(Raw("NaN")), st.just(Raw("-Infinity")))


def _value(
    node: dict[str, Any], spec: dict[str, Any], known: tuple[str, ...], depth: int, wild: bool = True
) -> st.SearchStrategy[Any]:
    """A value for ``node``: schema-shaped, and with ``wild`` hostile a quarter of the time."""
    node = _deref(node, spec)
    hostile = _hostile(known)
    if depth > 6:
        return hostile if wild else st.none()
    shaped: st.SearchStrategy[Any]
    if "anyOf" in node:
        shaped = st.one_of([_value(option, spec, known, depth + 1, wild) for option in node["anyOf"]])
    elif "enum" in node:
        shaped = st.sampled_from(node["enum"])
    elif node.get("type") == "object" or "properties" in node:
        shaped = _object(node, spec, known, depth, wild)
    elif node.get("type") == "array":
        items = _value(node.get("items", {}), spec, known, depth + 1, wild)
        high = node.get("maxItems")
        lengths = st.integers(node.get("minItems", 0), min(high or 8, 8))
        if high is not None and wild and high < 1000:  # (hypothesis cannot draw longer lists)
            lengths = lengths | st.just(high) | st.just(high + 1)
        shaped = lengths.flatmap(lambda n: st.lists(items, min_size=n, max_size=n))
    elif node.get("type") == "integer":
        low, high = node.get("minimum"), node.get("maximum")
        edges = [v for b in (low, high) if b is not None for v in (b - 1, b, b + 1)]
        shaped = st.integers(low, high)
        if wild:
            shaped = shaped | (st.sampled_from(edges) if edges else st.integers())
    elif node.get("type") == "number":
        shaped = st.floats(node.get("minimum"), node.get("maximum"), allow_nan=wild, allow_infinity=wild)
    elif node.get("type") == "boolean":
        shaped = st.booleans()
    elif node.get("type") == "string":
        shaped = _texts(known) if wild else st.sampled_from(known or ("x",))
    elif node.get("type") == "null":
        shaped = st.none()
    else:
        shaped = hostile
    return st.one_of(shaped, shaped, shaped, hostile) if wild else shaped


def _object(
    node: dict[str, Any], spec: dict[str, Any], known: tuple[str, ...], depth: int, wild: bool
) -> st.SearchStrategy[Any]:
    properties = node.get("properties", {})
    required = set(node.get("required", []))
    fields = {
        name: _value(sub, spec, known, depth + 1, wild)
        if name in required and not wild
        else st.one_of(st.just(_MISSING), _value(sub, spec, known, depth + 1, wild))
        for name, sub in properties.items()
    }
    names = st.sampled_from(["colour", "__proto__", "k ", "K", "$where"])
    extra = st.dictionaries(names, _hostile(known), max_size=1) if wild else st.just({})

    def build(values: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in values.items() if v is not _MISSING}, **more}

    examples = [e for e in node.get("examples", []) if isinstance(e, dict)]
    shaped = st.builds(build, st.fixed_dictionaries(fields), extra | st.just({}) | st.just({}))
    return st.one_of(shaped, st.sampled_from(examples)) if examples else shaped


_MISSING = object()


def _header_text() -> st.SearchStrategy[str]:
    return st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
    )


def fit_url_param(text: str) -> str:
    """``text`` cut until its percent-encoded form fits ``URL_PARAM_CHARS``: a longer URL would never
    leave the client, so it would test nothing on the server (a 20,000-character ASCII value fits)."""
    while len(quote(text, safe="", errors="surrogatepass")) > URL_PARAM_CHARS:
        text = text[: len(text) // 2]
    return text


def request_strategy(
    schema: dict[str, Any], known: list[str], api_key: str, max_body_bytes: int = 1_000_000
) -> st.SearchStrategy[FuzzRequest]:
    """Requests for every operation of ``schema``; ``known`` are real ids, so many requests go deep."""
    ops = operations(schema)
    ids = tuple(known)

    @st.composite
    def draw(data: st.DrawFn) -> FuzzRequest:
        op = data(st.sampled_from(ops))
        url, params, headers = op.path, {}, {}
        for parameter in op.parameters:
            where, name = parameter["in"], parameter["name"]
            if where == "header":
                if name.lower() == "x-api-key":
                    value = data(st.one_of(st.just(api_key), st.just(api_key), _header_text(), st.none()))
                else:
                    value = data(st.one_of(_header_text(), st.none()))
                if value is not None:
                    headers[name] = value.strip(" \t").encode("latin-1")
                continue
            value = data(_value(parameter.get("schema", {}), schema, ids, 1))
            text = value if isinstance(value, str) else encode(value)
            if where == "path":
                text = quote(fit_url_param(text), safe="", errors="surrogatepass") or "%20"
                url = url.replace("{" + name + "}", text)
            elif where == "query" and data(st.integers(0, 3)) > 0:
                params[name] = fit_url_param(text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
        content = None
        if op.body is not None or data(st.integers(0, 9)) == 0:
            body_kind = data(st.integers(0, 19))
            if body_kind == 0:
                content = data(
                    st.sampled_from([b"", b"{", b"null", b"[]", b"\xff\xfe", b'{"a":1}{', b"1e999"])
                )
            elif body_kind == 1:
                depth = data(st.integers(100, 200_000))
                content = b"[" * depth + b"]" * depth
            elif body_kind == 2:
                content = b'{"history": "' + b"a" * (max_body_bytes + 10) + b'"}'
            else:  # a third schema-shaped only (to reach the model), the rest with hostile values
                node = op.body if op.body is not None else {}
                wild = body_kind % 3 != 0
                content = encode(data(_value(node, schema, ids, 0, wild))).encode("utf-8")
            types = [b"application/json"] * 8 + [b"text/plain", b"application/x-www-form-urlencoded"]
            headers.setdefault("content-type", data(st.sampled_from(types)))
        return FuzzRequest(op.name, op.method.upper(), url, params, headers, content)

    return draw()


def problems(request: FuzzRequest, status: int, body: str, forbidden: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with one answer (empty = fine): 5xx, leaked internals, a 4xx without its field."""
    found = []
    where = f"{request.operation} -> {status}"
    if status >= 500:
        found.append(f"{where}: server error {body[:200]!r}")
    for marker in (*LEAK_MARKERS, *forbidden):
        if marker and marker in body:
            found.append(f"{where}: body leaks {marker!r}")
    if 400 <= status < 500 and status != 429:
        try:
            detail = json.loads(body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if not isinstance(detail, str) or not FIELD_PREFIX.match(detail):
            found.append(f"{where}: 4xx body does not name the field: {body[:200]!r}")
    return found

"""The wire contract: request and response bodies, with the documented limits.

Limits (also enforced against the bundle's own ``decoding`` maxima):
``k`` 1..100, ``beam`` 1..100 and >= k, ``history`` at most 500 ids (the model reads the most recent
``history_length``), ``filter.tag_path`` at most 8 levels, ``/recommend/batch`` at most 64 requests,
``/events`` at most 100 items per call, ``/items`` pages of at most 1000, item ids at most 200
characters, request bodies at most ``SIDREC_MAX_BODY_BYTES`` (413 beyond), JSON nesting as deep as
the schema needs (deeper is a 400 naming the body). Unknown fields are refused (422 naming the
field), so a typo never silently changes the answer. Types are strict: a string is not an integer
(``"k": "3"``), a boolean is not an integer (``"k": true``) and a number is not a boolean
(``"explain": 0``). Strings must be valid Unicode: a lone UTF-16 surrogate (``"\\ud800"`` in JSON) is
refused, since it could be neither stored nor sent back.

Every error body is ``ErrorBody`` (``detail``: one line naming the field at fault); a 422 adds
``errors``, one ``{field, message}`` per problem (``ValidationErrorBody``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BatchRequest",
    "BatchResponse",
    "BatchResult",
    "ErrorBody",
    "EventsRequest",
    "EventsResponse",
    "FieldProblem",
    "GroundingOut",
    "HistoryItem",
    "ItemInfo",
    "ItemPage",
    "ItemUpsert",
    "Readiness",
    "RecommendRequest",
    "RecommendResponse",
    "RecommendedItem",
    "ReloadRequest",
    "ReloadResponse",
    "TagOut",
    "ValidationErrorBody",
]

MAX_K = 100
MAX_BEAM = 100
MAX_HISTORY = 500
MAX_FILTER_DEPTH = 8
MAX_BATCH = 64
MAX_EVENTS = 100
MAX_PAGE = 1000


def _encodable(value: str) -> str:
    """Refuse lone surrogates: valid JSON escapes, but no UTF-8 for Redis, logs or the response."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid Unicode (lone surrogate at position {exc.start})") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]
ItemId = Annotated[Text, Field(min_length=1, max_length=200)]
#: A bundle directory's name under ``SIDREC_BUNDLE_ROOT``: no separators, so never a path.
BundleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")]


class _Request(BaseModel):
    """A request body: unknown fields refused, no type coercion (subclasses' configs merge with this)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorBody(BaseModel):
    """What every 4xx and 5xx answer carries."""

    detail: str = Field(description="what is wrong, naming the field, item or setting at fault")


class FieldProblem(BaseModel):
    field: str = Field(description="where in the request, e.g. 'history[3]', 'query.limit' or 'body'")
    message: str


class ValidationErrorBody(ErrorBody):
    """A 422: the request is well-formed JSON but not a valid request."""

    errors: list[FieldProblem] = Field(
        default_factory=list,
        description="one entry per problem (at most 20); ``detail`` joins them as 'field: message; ...'",
    )


class Filter(_Request):
    tag_path: list[Annotated[Text, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=MAX_FILTER_DEPTH, description="category path prefix, root optional"
    )


class RecommendRequest(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"history": ["SYN000001", "SYN000002"], "k": 10, "exclude_seen": True, "explain": True},
                {"user_id": "demo-user", "k": 5, "beam": 20, "filter": {"tag_path": ["Beauty", "Skin Care"]}},
            ]
        },
    )

    user_id: ItemId | None = Field(
        None, description="read this user's stored history when no history is given"
    )
    history: list[ItemId] | None = Field(
        None,
        max_length=MAX_HISTORY,
        description="item ids, oldest first; ids the bundle does not know are skipped (ignored_history)",
    )
    k: int = Field(10, ge=1, le=MAX_K)
    beam: int | None = Field(
        None, ge=1, le=MAX_BEAM, description="beam width (default: max(bundle default, k))"
    )
    exclude_seen: bool = True
    filter: Filter | None = None
    explain: bool = Field(True, description="give each item its generated tag_path")
    grounding: bool = Field(
        False,
        description="give each item the history items that share its longest semantic-ID prefix, "
        "with the tags that prefix stands for (no extra model call)",
    )

    @model_validator(mode="after")
    def _beam_covers_k(self) -> RecommendRequest:
        if self.beam is not None and self.beam < self.k:
            raise ValueError(f"beam ({self.beam}) must be >= k ({self.k})")
        if self.user_id is None and not self.history:
            raise ValueError("give a non-empty history, a user_id, or both")
        return self


#: what the two paths of an item mean; shared by every response that shows them
CATEGORY_PATH = "the catalogue's own category path, root first: the item's truth"
TAG_PATH = (
    "the generated tag path: what the tag heads read from the item's semantic ID, i.e. why the model "
    "went there. One tag per level, stopping at the deepest level with a named class (never a "
    "placeholder such as <other>), always a real path of the taxonomy; it can disagree with "
    "category_path, and each tag says whether it does (matches_category)"
)


class TagOut(BaseModel):
    """One level of a generated tag path."""

    tag: str = Field(description="the class's own name, e.g. 'Face'")
    confidence: float = Field(description="the tag head's probability of this class (0..1)")
    matches_category: bool | None = Field(
        None,
        description="whether the catalogue's category_path has this class at this level; "
        "null where the category path does not reach the level",
    )


class HistoryItem(BaseModel):
    item_id: str
    title: str


class GroundingOut(BaseModel):
    """Why this item, in the user's own terms: the history items closest to it in ID space."""

    shared_levels: int = Field(
        description="length of the longest semantic-ID prefix this item shares with a history item; "
        "0 when it shares none"
    )
    tag_path: list[str] = Field(
        description="the generated tags that shared prefix stands for (the item's tag_path, cut at "
        "shared_levels), e.g. ['Skin Care', 'Face']"
    )
    history: list[HistoryItem] = Field(
        description="the history items (among those the model read) that share that prefix, most recent first"
    )


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="summed log-probability of the item's ID")
    codes: list[int]
    tag_path: list[TagOut] | None = Field(description=TAG_PATH + "; null when explain is false")
    category_path: list[str] = Field(description=CATEGORY_PATH)
    title: str
    grounding: GroundingOut | None = Field(None, description="present when the request asks for grounding")


class RecommendResponse(BaseModel):
    bundle_id: str
    items: list[RecommendedItem]
    history_used: int = Field(description="how many history items the model read")
    ignored_history: list[str] = Field(
        default_factory=list,
        description="history items this bundle does not know (new, removed or not yet registered), "
        "skipped; the request fails (422) only when no known item is left",
    )
    cached: bool = False


class BatchRequest(_Request):
    requests: list[RecommendRequest] = Field(min_length=1, max_length=MAX_BATCH)


class BatchResult(BaseModel):
    """Either ``response`` or ``error`` (with the HTTP status the request would have had alone)."""

    response: RecommendResponse | None = None
    status: int = 200
    error: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult]


class EventsRequest(_Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "demo-user", "item_id": "SYN000001"}]}
    )

    user_id: ItemId
    item_id: ItemId | None = None
    item_ids: list[ItemId] | None = Field(
        None, min_length=1, max_length=MAX_EVENTS, description="several events, oldest first"
    )

    @model_validator(mode="after")
    def _one_of(self) -> EventsRequest:
        if (self.item_id is None) == (self.item_ids is None):
            raise ValueError("give exactly one of item_id or item_ids")
        return self

    @property
    def items(self) -> list[str]:
        return [self.item_id] if self.item_id is not None else list(self.item_ids or [])


class EventsResponse(BaseModel):
    user_id: str
    history_length: int
    store: str


class ItemInfo(BaseModel):
    item_id: str
    index: int
    title: str
    category_path: list[str] = Field(description=CATEGORY_PATH)
    codes: list[int]
    tag_path: list[TagOut] = Field(description=TAG_PATH)
    cold_start: bool = False


class ItemPage(BaseModel):
    total: int
    offset: int
    items: list[ItemInfo]


class ItemUpsert(_Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"embedding": [0.0, 0.1, -0.2], "title": "new serum", "category_path": ["Beauty"]}]
        }
    )

    embedding: list[float] | None = Field(
        None, max_length=65_536, description="the item's text embedding (the bundle's embedding_dim)"
    )
    text: Text | None = Field(
        None, max_length=100_000, description="not supported by bundles without a text encoder (422)"
    )
    title: Text = Field("", max_length=1000)
    category_path: list[Annotated[Text, Field(max_length=200)]] = Field(
        default_factory=list, max_length=MAX_FILTER_DEPTH
    )


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "shutting down"] = Field(
        description="degraded: Redis is unreachable and the service still serves; shutting down: 503"
    )
    store: str = Field(description="the history store: embedded (in-process), ok or degraded (Redis down)")
    bundle_id: str
    queue: int = Field(description="requests waiting for the model")
    fleet: dict[str, Any] | None = Field(
        None, description="with Redis: whether this replica serves the bundle the fleet was told to serve"
    )


class ReloadResponse(BaseModel):
    previous: str = Field(description="the bundle id served before")
    bundle_id: str = Field(description="the bundle id served now")


class ReloadRequest(_Request):
    bundle: BundleName | None = Field(
        None,
        description="name of a bundle directory under SIDREC_BUNDLE_ROOT (default: the configured bundle)",
    )

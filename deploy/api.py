"""HTTP API of the personalized reward endpoint: routes, request bodies, auth, limits and error replies.

``build_api(service, settings)`` returns the FastAPI app that the Serve ingress (``deploy/serve.py``)
runs; ``service`` does the model work (summarize, score) and owns the summary store. No Ray here.

Routes (all but /healthz and /readyz need ``Authorization: Bearer <token>``):
  POST   /v1/summaries                 context → summary; with user_id the summary is stored
  PUT    /v1/users/{user_id}/summary   set a user-edited summary     GET: read it   DELETE: remove it
  POST   /v1/rewards                   (user_id | summary | context) + prompt + responses → rewards
  POST   /v1/compare                   (user_id | summary | context) + prompt + response_a/b → P(a preferred)
  GET    /healthz                      liveness, no token
  GET    /readyz                       readiness: 200 when every model deployment answers, else 503, no token
  GET    /docs, /openapi.json          OpenAPI (token unless auth.public_docs)

Client mistakes get 4xx with ``{"detail": "...", ...}`` naming the field: 400 malformed JSON or a
body that is not UTF-8 (UTF-16/32 included), 401 missing/wrong token, 404 unknown user, 413 body over
limits.max_body_bytes, 415 not JSON (or a charset other than utf-8), 422 a field that is missing,
mistyped, empty (whitespace or invisible characters only) or over its limit, 431 request headers over
MAX_HEADER_BYTES; 408 a body not received whole within limits.body_timeout_s (a stalled client). The
server's own trouble is a 503 with Retry-After, never a 500 for a known cause: a model deployment whose
replica died (until a probe finds it answering again) or that has not answered within
limits.model_timeout_s. An error reply quotes at most ECHO_LIMIT characters of any client-sent text (a field
name, a media type) and lists at most MAX_ERRORS_SHOWN fields.

User ids (path and body alike) are URL path segments: 1 to limits.max_user_id_chars characters from
A-Z a-z 0-9 . _ : @ - and not only dots (USER_ID_PATTERN; "." and ".." would be normalised away by
clients' URL handling).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations, and the request
# bodies are classes built per config inside request_bodies() (their limits come from config).

import asyncio
import dataclasses
import hmac
import logging
import math
import unicodedata
from typing import Annotated, Any, Literal, Optional, Protocol

from fastapi import APIRouter, FastAPI, Path, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from rlhf_cluster.serve_config import ServeLimits
from rlhf_cluster.summary_store import StoredSummary, SummaryStore

logger = logging.getLogger("ray.serve")

# Letters, digits and . _ : @ -, at least one of them not a dot: "." and ".." are URL dot segments.
USER_ID_PATTERN = r"^[A-Za-z0-9._:@-]*[A-Za-z0-9_:@-][A-Za-z0-9._:@-]*$"
USER_ID_RULE = "{} to {} characters from A-Z a-z 0-9 . _ : @ -, not only dots (the id is a URL path segment)"
ECHO_LIMIT = 200  # characters of client-sent text (field names, media types) quoted in an error reply
MAX_ERRORS_SHOWN = 20  # fields listed in one 422 reply; the rest are counted
MAX_HEADER_BYTES = 16 * 1024  # request header names + values; more gets 431 before auth or routing
PUBLIC_PATHS = ("/healthz", "/readyz")
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
BODY_METHODS = ("POST", "PUT", "PATCH")


class ApiError(Exception):
    """A request the API refuses: becomes ``{"detail": message, "field": field}`` with ``status`` (and
    ``headers``, e.g. Retry-After with a 503)."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    token: str
    limits: ServeLimits
    public_docs: bool = False


@dataclasses.dataclass(frozen=True)
class Scored:
    """The reward model's answer for one request: a reward per response, the fields cut from each response's
    input (``[]``: it fit), and ``error`` when the conditioning alone does not fit (a 422 for the client)."""

    rewards: list[float]
    cut: list[list[str]]
    error: str | None = None


class Service(Protocol):
    """What the routes need from the Serve ingress."""

    store: SummaryStore

    async def summarize(
        self, context: list[dict], context_messages: list[dict], max_context_pairs: int | None
    ) -> str: ...

    async def context_conditioning(self, body: Any) -> tuple[str, str]: ...  # (text, "summarized" | "context")

    async def score(self, conditioning: str, prompt: str, responses: list[str]) -> Scored: ...

    async def ready(self) -> dict[str, bool]: ...  # {deployment: answering now}


# ---------------------------------------------------------------------------------- request bodies


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


# Characters that show nothing: controls, format characters (zero-width space/joiners U+200B-U+200D,
# word joiner U+2060, BOM U+FEFF, soft hyphen, bidi marks), and space, line and paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Letters and symbols that render as blanks: Hangul fillers, the blank Braille pattern, the combining
# grapheme joiner and the variation selectors.
_INVISIBLE_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f" + "".join(map(chr, range(0xFE00, 0xFE10))))


def _visible(char: str) -> bool:
    return unicodedata.category(char) not in _INVISIBLE_CATEGORIES and char not in _INVISIBLE_CHARACTERS


def _visible_pattern() -> str:
    """A JSON-schema ``pattern`` (unanchored: "contains a match") true of text with a visible character:
    one character outside the invisible set, written as ranges of the Basic Multilingual Plane (the
    invisible format characters above it, such as language tags, are refused by the server only)."""
    ranges, start = [], None
    for code in range(0x10000 + 1):
        invisible = code <= 0xFFFF and not (0xD800 <= code <= 0xDFFF) and not _visible(chr(code))
        if invisible and start is None:
            start = code
        elif not invisible and start is not None:
            ranges.append(f"\\u{start:04x}" + (f"-\\u{code - 1:04x}" if code - 1 > start else ""))
            start = None
    return "[^" + "".join(ranges) + "]"


def _not_blank(text: str) -> str:
    if not any(map(_visible, text)):
        raise ValueError("must not be empty or only whitespace or invisible characters (such as U+200B)")
    return text


VISIBLE_PATTERN = _visible_pattern()
# The body rules pydantic validators enforce, written into the OpenAPI schema as well: a context holds
# at least one item; exactly one of user_id, summary, or a context (pairs and/or messages) is given.
_HAS_CONTEXT = [
    {"required": ["context"], "properties": {"context": {"minItems": 1}}},
    {"required": ["context_messages"], "properties": {"context_messages": {"minItems": 1}}},
]
_ONE_CONDITIONING = [
    {"required": ["user_id"], "properties": {"user_id": {"type": "string"}}},
    {"required": ["summary"], "properties": {"summary": {"type": "string"}}},
    {"anyOf": _HAS_CONTEXT},
]


@dataclasses.dataclass(frozen=True)
class Bodies:
    Summarize: type[BaseModel]
    SetSummary: type[BaseModel]
    Rewards: type[BaseModel]
    Compare: type[BaseModel]
    UserIdPath: Any  # the annotated path parameter


def request_bodies(limits: ServeLimits) -> Bodies:
    """Request body classes whose limits (text length, list sizes) come from ``limits``."""
    Text = Annotated[
        str,
        StringConstraints(min_length=1, max_length=limits.max_text_chars),
        AfterValidator(_not_blank),
        Field(json_schema_extra={"pattern": VISIBLE_PATTERN}),
    ]
    id_rule = USER_ID_RULE.format(1, limits.max_user_id_chars)
    UserId = Annotated[
        str, StringConstraints(min_length=1, max_length=limits.max_user_id_chars, pattern=USER_ID_PATTERN)
    ]

    class Pair(Body):
        prompt: Text
        chosen: Text = Field(description="The response this user preferred.")
        rejected: Text = Field(description="The response this user did not prefer.")

    class Message(Body):
        role: Literal["system", "user", "assistant"]
        content: Text

    class WithContext(Body):
        context: list[Pair] = Field(
            default_factory=list, max_length=limits.max_context_pairs, description="The user's labelled pairs."
        )
        context_messages: list[Message] = Field(
            default_factory=list, max_length=limits.max_context_messages, description="The user's past conversation."
        )
        max_context_pairs: Optional[int] = Field(
            None, ge=0, description="Show the model at most this many of the latest context pairs."
        )

        @property
        def has_context(self) -> bool:
            return bool(self.context or self.context_messages)

    class SummarizeRequest(WithContext):
        model_config = ConfigDict(json_schema_extra={"anyOf": _HAS_CONTEXT})
        user_id: Optional[UserId] = Field(None, description=f"Store the summary for this user: {id_rule}.")

        @model_validator(mode="after")
        def _needs_context(self):
            if not self.has_context:
                raise ValueError("context or context_messages must hold at least one item")
            return self

    class SetSummaryRequest(Body):
        summary: Text

    class Conditioned(WithContext):
        """Exactly one of user_id (its stored summary), summary, or context (summarized now)."""

        model_config = ConfigDict(json_schema_extra={"oneOf": _ONE_CONDITIONING})

        user_id: Optional[UserId] = Field(None, description=f"Use this user's stored summary: {id_rule}.")
        summary: Optional[Text] = Field(None, description="Use this summary text.")
        prompt: Text

        @model_validator(mode="after")
        def _exactly_one_conditioning(self):
            given = [
                n for n, v in (("user_id", self.user_id), ("summary", self.summary), ("context", self.has_context)) if v
            ]
            if len(given) != 1:
                got = ", ".join(given) if given else "none"
                raise ValueError(f"give exactly one of user_id, summary or context (context_messages); got {got}")
            return self

    class RewardsRequest(Conditioned):
        responses: list[Text] = Field(min_length=1, max_length=limits.max_responses)

    class CompareRequest(Conditioned):
        response_a: Text
        response_b: Text

    user_id_path = Annotated[
        str,
        Path(
            min_length=1,
            max_length=limits.max_user_id_chars,
            pattern=USER_ID_PATTERN,
            description=f"User id: {id_rule}.",
        ),
    ]
    return Bodies(SummarizeRequest, SetSummaryRequest, RewardsRequest, CompareRequest, user_id_path)


# --------------------------------------------------------------------------------- response bodies


class SummaryOut(BaseModel):
    user_id: str
    summary: str
    source: Literal["summarizer", "user"] = Field(description="Written by the summarizer, or set by the user.")
    updated_at: float = Field(description="Unix time of the last write.")


class SummarizeOut(BaseModel):
    summary: str
    user_id: Optional[str] = None
    stored: bool = Field(description="True when the summary was stored for user_id.")


class RewardsOut(BaseModel):
    rewards: list[float] = Field(description="One reward per response, in order.")
    truncated: list[bool] = Field(description="Per response: the reward input was cut to the model's max length.")
    truncated_fields: list[list[Literal["conditioning", "prompt", "response"]]] = Field(
        description="Per response: what was cut to fit (the prompt's start, then the response's end; the "
        "conditioning is kept whole, and a request whose conditioning alone does not fit gets a 422)."
    )
    conditioning: Literal["stored", "given", "summarized", "context"] = Field(
        description="Where the conditioning text came from."
    )
    summary: str = Field(description="The text the reward model was conditioned on (for context: the summary written).")


class FieldErrorOut(BaseModel):
    field: str = Field(description="The field, e.g. context[0].prompt (body for the body as a whole).")
    message: str


class ErrorOut(BaseModel):
    """Every error reply: ``detail`` says what is wrong; ``field`` names the one field at fault (404, 422
    from a route); ``errors`` lists each bad field of a body that failed validation (422)."""

    detail: str
    field: Optional[str] = None
    errors: Optional[list[FieldErrorOut]] = None


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorOut, "description": _ERROR_MEANING[code]} for code in codes}


_ERROR_MEANING = {
    400: "Malformed JSON, or a body that is not UTF-8.",
    401: "Missing or wrong bearer token.",
    404: "No stored summary for this user id.",
    405: "Method not allowed on this path.",
    408: "The request body was not received within limits.body_timeout_s.",
    413: "Body larger than limits.max_body_bytes.",
    415: "Not application/json, or a charset other than utf-8.",
    422: "A field missing, mistyped, empty or over its limit; the request's text does not fit a model.",
    431: "Request headers larger than 16 KiB.",
    503: "A model deployment is down or did not answer in time: retry after Retry-After seconds.",
}
_V1_ERRORS = _errors(400, 401, 404, 408, 413, 415, 422, 431, 503)


class ReadyOut(BaseModel):
    status: Literal["ready", "unavailable"] = Field(description="ready when every model deployment answers.")
    deployments: dict[str, bool] = Field(description="Per model deployment: it answered a ping just now.")


class CompareOut(BaseModel):
    p_a: float = Field(description="P(the user prefers response_a) = σ(r_a − r_b).")
    rewards: list[float] = Field(description="[r_a, r_b].")
    conditioning: Literal["stored", "given", "summarized", "context"]
    summary: str


def _summary_out(s: StoredSummary) -> SummaryOut:
    return SummaryOut(**dataclasses.asdict(s))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# ------------------------------------------------------------------------------------------- app


def build_api(service: Service, settings: ApiSettings) -> FastAPI:
    """The FastAPI app: routes calling ``service``, guarded by auth and body checks."""
    bodies = request_bodies(settings.limits)
    app = FastAPI(
        title="rlhf_cluster personalized reward endpoint",
        description="PLUS: a summarizer writes a text summary of a user; a reward model conditioned on it "
        "scores responses.",
        version="1",
    )
    # Added innermost first; on the way in: the header size, auth (headers only), the body checks, the routes.
    limits = settings.limits
    app.add_middleware(BodyGuard, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s, router=app.router)
    app.add_middleware(BearerAuth, token=settings.token, public_docs=settings.public_docs)
    app.add_middleware(HeaderLimit)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)

    @app.get("/healthz", responses=_errors(431))
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyOut, responses={**_errors(431), 503: {"model": ReadyOut}})
    async def readyz():
        up = await service.ready()
        if all(up.values()):
            return ReadyOut(status="ready", deployments=up)
        headers = {"Retry-After": str(settings.limits.retry_after_s)}
        return JSONResponse(status_code=503, content={"status": "unavailable", "deployments": up}, headers=headers)

    # HTTPBearer(auto_error=False) checks nothing (BearerAuth did); it puts the scheme in the OpenAPI.
    v1 = APIRouter(prefix="/v1", dependencies=[Security(HTTPBearer(auto_error=False))], responses=_V1_ERRORS)
    _summary_routes(v1, service, bodies)
    _reward_routes(v1, service, bodies)
    app.include_router(v1)
    return app


def _summary_routes(router: APIRouter, service: Service, bodies: Bodies) -> None:
    store = service.store
    UserIdPath = bodies.UserIdPath

    @router.post("/summaries", response_model=SummarizeOut)
    async def summarize(body: bodies.Summarize):
        text = await service.summarize(
            [p.model_dump() for p in body.context],
            [m.model_dump() for m in body.context_messages],
            body.max_context_pairs,
        )
        if body.user_id is not None:
            await asyncio.to_thread(store.put, body.user_id, text, "summarizer")
        return SummarizeOut(summary=text, user_id=body.user_id, stored=body.user_id is not None)

    @router.put("/users/{user_id}/summary", response_model=SummaryOut)
    async def set_summary(user_id: UserIdPath, body: bodies.SetSummary):
        return _summary_out(await asyncio.to_thread(store.put, user_id, body.summary, "user"))

    @router.get("/users/{user_id}/summary", response_model=SummaryOut)
    async def get_summary(user_id: UserIdPath):
        return _summary_out(await _stored(store, user_id))

    @router.delete("/users/{user_id}/summary", status_code=204)
    async def delete_summary(user_id: UserIdPath):
        if not await asyncio.to_thread(store.delete, user_id):
            raise _unknown_user(user_id)
        return Response(status_code=204)


def _reward_routes(router: APIRouter, service: Service, bodies: Bodies) -> None:
    @router.post("/rewards", response_model=RewardsOut)
    async def rewards(body: bodies.Rewards):
        text, source = await _conditioning(service, body)
        scored = _checked(await service.score(text, body.prompt, list(body.responses)), source)
        truncated = [bool(c) for c in scored.cut]
        return RewardsOut(
            rewards=scored.rewards, truncated=truncated, truncated_fields=scored.cut, conditioning=source, summary=text
        )

    @router.post("/compare", response_model=CompareOut)
    async def compare(body: bodies.Compare):
        text, source = await _conditioning(service, body)
        scored = _checked(await service.score(text, body.prompt, [body.response_a, body.response_b]), source)
        r_a, r_b = scored.rewards
        return CompareOut(p_a=_sigmoid(r_a - r_b), rewards=[r_a, r_b], conditioning=source, summary=text)


# The request field a conditioning text came from, by its source (named in a 422 when it does not fit).
_CONDITIONING_FIELD = {"stored": "user_id", "given": "summary", "summarized": "context", "context": "context"}


def _checked(scored: Scored, source: str) -> Scored:
    if scored.error:
        raise ApiError(422, scored.error, field=_CONDITIONING_FIELD[source])
    return scored


async def _conditioning(service: Service, body) -> tuple[str, str]:
    """(conditioning text, where it came from) for a body with exactly one of user_id, summary, context."""
    if body.user_id is not None:
        return (await _stored(service.store, body.user_id)).summary, "stored"
    if body.summary is not None:
        return body.summary, "given"
    return await service.context_conditioning(body)


async def _stored(store: SummaryStore, user_id: str) -> StoredSummary:
    stored = await asyncio.to_thread(store.get, user_id)
    if stored is None:
        raise _unknown_user(user_id)
    return stored


def _unknown_user(user_id: str) -> ApiError:
    shown = _clip(user_id)
    return ApiError(
        404,
        f"no stored summary for user_id {shown!r}; store one with PUT /v1/users/{shown}/summary or "
        "POST /v1/summaries with a user_id",
        field="user_id",
    )


# ---------------------------------------------------------------------------------- error replies


def _clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """Client-sent text as an error reply may quote it: at most ``limit`` characters, then its length."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _error(status: int, detail: str, **extra) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, **extra})


async def _api_error(_request, exc: ApiError) -> JSONResponse:
    content = {"detail": exc.message, **({"field": exc.field} if exc.field else {})}
    return JSONResponse(status_code=exc.status, content=content, headers=exc.headers)


def _field_name(loc: tuple) -> str:
    """("body", "context", 0, "prompt") → "context[0].prompt"; ("path", "user_id") → "user_id"."""
    parts = [p for p in loc if p not in ("body", "path", "query")]
    name = ""
    for p in parts:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return _clip(name) or "body"  # a misspelt field's name is the client's text


async def _validation_error(_request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field (never echoing its value back); malformed JSON is a 400."""
    errors = exc.errors()
    bad_json = next((e for e in errors if e["type"] == "json_invalid"), None)
    if bad_json is not None:
        why = _clip(str((bad_json.get("ctx") or {}).get("error", "malformed")))
        return _error(400, f"request body is not valid JSON: {why} (at character {bad_json['loc'][-1]})")
    fields = [_field_error(e) for e in errors[:MAX_ERRORS_SHOWN]]
    detail = "invalid request: " + "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    if len(errors) > MAX_ERRORS_SHOWN:
        detail += f"; and {len(errors) - MAX_ERRORS_SHOWN} more"
    return _error(422, detail, errors=fields)


def _field_error(e: dict) -> dict:
    """One validation error as {"field", "message"}, both clipped (never the value itself)."""
    field = _field_name(tuple(e["loc"]))
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing" and field == "body":
        msg = "a JSON object body is required"
    elif e["type"] == "model_attributes_type":
        msg = "expected a JSON object"
    return {"field": field, "message": _clip(msg)}


async def _unexpected_error(_request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


# -------------------------------------------------------------------------------------- middleware


def _route_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _reply(scope, receive, send, status: int, detail: str, headers: dict | None = None) -> None:
    await JSONResponse(status_code=status, content={"detail": detail}, headers=headers)(scope, receive, send)


def _header(scope, name: bytes) -> bytes:
    """The first value of the request header ``name`` (lower case), b"" without one."""
    return next((value for key, value in scope.get("headers") or () if key == name), b"")


class HeaderLimit:
    """ASGI middleware: 431 for a request whose header names and values pass ``max_bytes`` together,
    before auth or routing look at them (anonymous or not).

    It cannot stop the read itself: the ASGI server has parsed the headers by then. Ray Serve's proxy
    runs uvicorn with httptools, which sets no bound (a 4 MB header was read whole); uvicorn's h11 bound
    (16 KiB) is not used and Serve's HTTPOptions do not expose one. A public endpoint needs a reverse
    proxy in front that bounds headers (e.g. nginx large_client_header_buffers).
    """

    def __init__(self, app, max_bytes: int = MAX_HEADER_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope.get("headers") or ())
            if size > self.max_bytes:
                detail = f"request headers too large: {size} bytes (names and values); the limit is {self.max_bytes}"
                return await _reply(scope, receive, send, 431, detail)
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: ``Authorization: Bearer <token>`` on every route but /healthz (and docs if public).

    Checked before the body is read, so a client without the token learns nothing about the API. The
    comparison is constant-time (hmac.compare_digest) so response timing does not leak the token.
    """

    def __init__(self, app, token: str, public_docs: bool = False):
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app, self.token = app, token.encode()
        self.public = PUBLIC_PATHS + (DOC_PATHS if public_docs else ())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or _route_path(scope) in self.public:
            return await self.app(scope, receive, send)
        scheme, _, given = _header(scope, b"authorization").partition(b" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != b"bearer" or not given.strip():
            return await _reply(
                scope, receive, send, 401, "missing bearer token: send 'Authorization: Bearer <token>'", challenge
            )
        if not hmac.compare_digest(given.strip(), self.token):
            return await _reply(scope, receive, send, 401, "invalid bearer token", challenge)
        await self.app(scope, receive, send)


class BodyGuard:
    """ASGI middleware for request bodies: JSON media type with no charset but utf-8 (415), at most
    ``max_bytes`` (413, checked on Content-Length and on the bytes actually received, so chunked uploads
    are bounded too) and UTF-8 text (400; UTF-16/32 too, which json.loads would otherwise detect and
    accept). The checked body is replayed to the app."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 10.0, router=None):
        self.app, self.max_bytes, self.timeout_s, self.router = app, max_bytes, timeout_s, router

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS or not self._routed(scope):
            return await self.app(scope, receive, send)  # no route takes it: the router answers 404 / 405
        if problem := _media_type_error(_header(scope, b"content-type")):
            return await _reply(scope, receive, send, 415, problem)
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _reply(scope, receive, send, 413, self._too_large(int(declared)))
        try:  # a client that sends headers and then stalls must not hold a request slot for ever
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except asyncio.TimeoutError:
            detail = f"request body not received within {self.timeout_s:g} s (limits.body_timeout_s)"
            return await _reply(scope, receive, send, 408, detail, {"Connection": "close"})
        if body is None:
            return await _reply(scope, receive, send, 413, self._too_large(None))
        if problem := _encoding_error(body):
            return await _reply(scope, receive, send, 400, problem)
        await self.app(scope, _replay(body, receive), send)

    def _routed(self, scope) -> bool:
        """Whether a route takes this method on this path (every request does when no router is given)."""
        from starlette.routing import Match

        return self.router is None or any(r.matches(scope)[0] == Match.FULL for r in self.router.routes)

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_bytes."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, size: int | None) -> str:
        got = f"{size} bytes" if size is not None else "more than that"
        return f"request body too large: {got}; the limit is {self.max_bytes} bytes (limits.max_body_bytes)"


def _media_type_error(content_type: bytes) -> str | None:
    """Why a Content-Type is not JSON in UTF-8 (the client's text clipped), or None."""
    media, *params = content_type.decode("latin-1").split(";")
    media = media.strip().lower()
    if media != "application/json":
        return f"Content-Type must be application/json, got {_clip(media) or 'none'}"
    for param in params:
        key, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            return f"Content-Type charset must be utf-8 (JSON is UTF-8 text), got {_clip(charset)}"
    return None


def _encoding_error(body: bytes) -> str | None:
    """Why a body is not UTF-8 JSON text, or None. UTF-8 JSON has no NUL byte (it would be an unescaped
    control character); UTF-16 and UTF-32 text has one in every ASCII character."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"request body is not valid UTF-8: byte {body[err.start]:#04x} at position {err.start}"
    if (nul := body.find(b"\x00")) >= 0:
        return f"request body is not valid UTF-8 JSON: a NUL byte at position {nul} (UTF-16 or UTF-32 text?)"
    return None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the real stream (http.disconnect)

    return replay

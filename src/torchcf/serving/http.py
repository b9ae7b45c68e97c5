"""HTTP service over a ``Recommender``: FastAPI app factory and the uvicorn runner.

Endpoints: ``GET /recommend``, ``POST /recommend`` (users, or items for fold-in), ``GET /similar``,
``GET /health``, ``GET /model`` and the OpenAPI docs at ``/docs``; the page at ``GET /`` and the
JSON it reads (``GET /explore/user``, ``/explore/random-user``, ``/explore/items``,
``/explore/item``, ``/explore/runs``, ``/explore/model``), answered by the same ``Recommender``.
Bad input never reaches the model as a 500: unknown ids are 404 with ``{"detail": ...}``,
invalid parameters and malformed JSON are 422, bodies over ``max_body_bytes`` are 413. The model
is loaded once, before the app exists.
"""

from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torchcf import __version__
from torchcf.errors import TorchcfError, UnknownIdError
from torchcf.serving.explore import Explorer, History
from torchcf.serving.page import page
from torchcf.serving.recommender import Recommender

__all__ = ["create_app", "serve"]

Id = int | str


class RecommendRequest(BaseModel):
    """A batch of known users, or (fold-in) the items a new user interacted with."""

    model_config = ConfigDict(extra="forbid")
    users: list[Id] | None = Field(default=None, min_length=1)
    items: list[Id] | None = Field(default=None, min_length=1)
    k: int = Field(default=10, ge=1)
    exclude_seen: bool = True
    filter_items: list[Id] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "RecommendRequest":
        if (self.users is None) == (self.items is None):
            raise ValueError("give exactly one of 'users' (known users) or 'items' (fold-in)")
        return self


class Recommendation(BaseModel):
    item: Id
    score: float
    title: str | None = None


class UserRecommendations(BaseModel):
    user: Id | None
    items: list[Recommendation]


class SimilarItems(BaseModel):
    item: Id
    items: list[Recommendation]


class BodyTooLarge(HTTPException):
    """A request body past the limit, however it was sent (with a length or chunked)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes")


class BodyLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` gets 413. A declared
    ``Content-Length`` is checked before anything is read; a chunked body is counted as it
    arrives and refused as soon as it passes the limit (never buffered whole)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over {self.max_bytes} bytes"}, status_code=413
        )
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the offending input (it may be NaN, huge or not JSON at all)."""
    return [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in exc.errors()
    ]


def _items(rec: Recommender, ids: np.ndarray, scores: np.ndarray) -> list[Recommendation]:
    return [Recommendation(**row) for row in rec.rows(ids, scores)]


def create_app(
    rec: Recommender,
    max_k: int = 1000,
    max_batch: int = 1000,
    max_body_bytes: int = 1_000_000,
    history: History | None = None,
    other: tuple[Recommender, History | None] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``rec``: k ≤ ``max_k``, ≤ ``max_batch`` users/items per request;
    ``history`` (the run's split) gives the page users' histories and held-out items; ``other``
    (a second run and its history) is shown beside it on the page (the JSON API is ``rec``'s)."""
    app = FastAPI(
        title="torchcf",
        version=__version__,
        description=f"Recommendations from a trained {rec.name} model.",
    )
    app.state.recommender = rec
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    K = Annotated[int, Query(ge=1, le=max_k, description=f"list length, 1–{max_k}")]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _errors(exc)}, status_code=422)

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return JSONResponse({"detail": "request nested too deeply"}, status_code=400)

    @app.exception_handler(UnknownIdError)
    async def unknown_id(request: Request, exc: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(TorchcfError)
    async def bad_input(request: Request, exc: TorchcfError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    explorers = [Explorer(rec, history or History.from_seen(rec.seen))]
    if other is not None:
        explorers.append(Explorer(other[0], other[1] or History.from_seen(other[0].seen)))
    explorer = explorers[0]
    Text = Annotated[str, Query(min_length=1, max_length=200)]
    Run = Annotated[int, Query(ge=0, le=len(explorers) - 1, description="0: the first run")]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(page(" vs ".join(e.rec.name for e in explorers)))

    @app.get("/explore/runs")
    def explore_runs() -> list[dict[str, Any]]:
        return [{"run": i, "model": e.rec.name} for i, e in enumerate(explorers)]

    @app.get("/explore/model")
    def explore_model(run: Run = 0) -> dict[str, Any]:
        return explorers[run].rec.card()

    @app.get("/explore/user")
    def explore_user(user: Text, k: K = 10, run: Run = 0) -> dict[str, Any]:
        return explorers[run].user(user, k=k)

    @app.get("/explore/random-user")
    def explore_random_user() -> dict[str, Any]:
        return {"user": explorer.random_user()}

    @app.get("/explore/items")
    def explore_items(
        q: Annotated[str, Query(max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> list[dict[str, Any]]:
        return explorer.search(q, limit)

    @app.get("/explore/item")
    def explore_item(item: Text) -> dict[str, Any]:
        index = int(rec.item_map.to_index(np.array([item]), what="item")[0])
        return explorer.item(index)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": rec.name, "items": rec.num_items}

    @app.get("/model")
    def model_card() -> dict[str, Any]:
        return rec.card()

    @app.get("/recommend", response_model=UserRecommendations)
    def recommend_one(
        user: Annotated[str, Query(min_length=1, max_length=200)],
        k: K = 10,
        exclude_seen: bool = True,
    ) -> UserRecommendations:
        ids, scores = rec.recommend(user, k=k, exclude_seen=exclude_seen)
        return UserRecommendations(
            user=rec.user_map.canonical(user), items=_items(rec, ids, scores)
        )

    @app.post("/recommend", response_model=list[UserRecommendations])
    def recommend_many(body: RecommendRequest) -> list[UserRecommendations]:
        if body.k > max_k:
            raise TorchcfError(f"k must be at most {max_k}, got {body.k}")
        given = body.users if body.users is not None else body.items
        assert given is not None
        if len(given) > max_batch or len(body.filter_items or []) > rec.num_items:
            raise TorchcfError(f"at most {max_batch} users or items per request")
        if body.items is not None:
            ids, scores = rec.recommend_for_items(
                body.items, k=body.k, exclude_seen=body.exclude_seen, filter_items=body.filter_items
            )
            return [UserRecommendations(user=None, items=_items(rec, ids, scores))]
        users = np.asarray(body.users, dtype=object)
        ids, scores = rec.recommend(
            users, k=body.k, exclude_seen=body.exclude_seen, filter_items=body.filter_items
        )
        return [
            UserRecommendations(user=u, items=_items(rec, i, s))
            for u, i, s in zip(body.users or [], ids, scores, strict=True)
        ]

    @app.get("/similar", response_model=SimilarItems)
    def similar(
        item: Annotated[str, Query(min_length=1, max_length=200)], k: K = 10
    ) -> SimilarItems:
        ids, scores = rec.similar_items(item, k=k)
        return SimilarItems(item=rec.item_map.canonical(item), items=_items(rec, ids, scores))

    return app


def serve(
    rec: Recommender,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    max_k: int = 1000,
    history: History | None = None,
    other: tuple[Recommender, History | None] | None = None,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(rec, max_k=max_k, history=history, other=other)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

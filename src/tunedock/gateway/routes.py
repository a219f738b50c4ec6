"""Routes of the inference API: OpenAI's paths, forwarded to the model's live replicas."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.types import Receive, Scope, Send

from tunedock.deployments.routing import Route
from tunedock.errors import NotFound
from tunedock.gateway.forwarder import Gateway

router = APIRouter(prefix="/v1", tags=["inference"])


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


# The inference routes that the gateway forwards, by path; the name is the replica's path.
FORWARDED = {"/v1/completions": "completions", "/v1/chat/completions": "chat/completions",
             "/v1/embeddings": "embeddings"}


class ForwardedCall(Response):
    """A response that the gateway produces: it reads the request and relays the replica's response."""

    def __init__(self, gateway: Gateway, route_name: str) -> None:
        super().__init__()
        self.gateway = gateway
        self.route_name = route_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.handle(scope, receive, send, self.route_name)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return ForwardedCall(_gateway(request), "completions")


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return ForwardedCall(_gateway(request), "chat/completions")


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    return ForwardedCall(_gateway(request), "embeddings")


@router.get("/models")
async def list_models(request: Request) -> dict[str, object]:
    gateway = _gateway(request)
    principal = await gateway.authenticate(request.headers.get("authorization", ""))
    routes = [route for route in gateway.services.routing.routes() if principal.may_call_model(route.slug)]
    return {"object": "list", "data": [_model_object(route) for route in routes]}


@router.get("/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, object]:
    gateway = _gateway(request)
    principal = await gateway.authenticate(request.headers.get("authorization", ""))
    route = gateway.services.routing.get(model)
    if route is None or not principal.may_call_model(model):
        raise NotFound(f"Model {model!r} is not deployed; GET /v1/models lists the deployed models.",
                       code="model_not_found", param="model")
    return _model_object(route)


def _model_object(route: Route) -> dict[str, object]:
    return {"id": route.slug, "object": "model", "created": route.created, "owned_by": "tunedock"}

"""``tunedock notifications``, ``watch`` and ``unwatch``: who hears about deployments."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from tunedock.cli.client import ApiClient, model_path, resolve_connection
from tunedock.cli.output import echo_json, echo_table, short_time

notifications_app = typer.Typer(help="Show sent and pending notifications, and turn your emails on or off.")

UrlOption = Annotated[str | None, typer.Option("--url", help="Server address; default TUNEDOCK_URL or the client config.")]
TokenOption = Annotated[str | None, typer.Option("--token", help="API key or token; default TUNEDOCK_TOKEN or the client config.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ModelArgument = Annotated[str, typer.Argument(help="Model name, slug or id.")]


class DeliveryStatus(str, Enum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    failed = "failed"


def _client(url: str | None, token: str | None) -> ApiClient:
    return ApiClient(resolve_connection(url, token))


@notifications_app.callback(invoke_without_command=True)
def notifications(
    context: typer.Context,
    status: Annotated[DeliveryStatus | None, typer.Option(help="Only notifications with this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Rows to show, newest first.")] = 50,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """List recent notifications with their delivery status."""
    if context.invoked_subcommand is not None:
        return
    params: dict[str, str | int] = {"limit": limit}
    if status is not None:
        params["status"] = status.value
    items = _client(url, token).get("/api/notifications", params=params)["items"]
    if as_json:
        echo_json(items)
        return
    rows = [[str(item["id"]), short_time(item["created_at"]), item["channel"], item["status"],
             str(item["attempts"]), item["subject"], (item["last_error"] or "")[:60]] for item in items]
    echo_table(["ID", "CREATED", "CHANNEL", "STATUS", "ATTEMPTS", "SUBJECT", "LAST ERROR"], rows)


@notifications_app.command("on")
def notifications_on(url: UrlOption = None, token: TokenOption = None) -> None:
    """Receive notification emails (the default)."""
    _client(url, token).request("PUT", "/api/users/me/notifications", json={"enabled": True})
    typer.echo("Notification emails are on.")


@notifications_app.command("off")
def notifications_off(url: UrlOption = None, token: TokenOption = None) -> None:
    """Stop receiving notification emails."""
    _client(url, token).request("PUT", "/api/users/me/notifications", json={"enabled": False})
    typer.echo("Notification emails are off. `tunedock notifications on` turns them back on.")


def watch(model: ModelArgument, url: UrlOption = None, token: TokenOption = None) -> None:
    """Receive the notifications of a model's deployments, whoever deploys it."""
    state = _client(url, token).request("PUT", f"{model_path(model)}/watch")
    typer.echo(f"Watching {state['model']}.")


def unwatch(model: ModelArgument, url: UrlOption = None, token: TokenOption = None) -> None:
    """Stop receiving a model's notifications (unless you deploy it yourself)."""
    state = _client(url, token).request("DELETE", f"{model_path(model)}/watch")
    typer.echo(f"No longer watching {state['model']}.")

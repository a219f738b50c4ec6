"""``tunedock login``, ``users``, ``keys`` and ``audit``: people, their keys and what they did."""

from __future__ import annotations

import json
import os
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import typer

from tunedock.cli.client import ApiClient, client_config_path, resolve_connection
from tunedock.cli.output import echo_json, echo_table, short_time

users_app = typer.Typer(no_args_is_help=True, help="Add, list, disable and change users (admins).")
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")

UrlOption = Annotated[str | None, typer.Option("--url", help="Server address; default TUNEDOCK_URL or the client config.")]
TokenOption = Annotated[str | None, typer.Option("--token", help="API key or token; default TUNEDOCK_TOKEN or the client config.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
UsernameArgument = Annotated[str, typer.Argument(help="The user's username.")]


class Role(str, Enum):
    viewer = "viewer"
    developer = "developer"
    admin = "admin"


def _client(url: str | None, token: str | None) -> ApiClient:
    return ApiClient(resolve_connection(url, token))


def login(
    username: Annotated[str, typer.Option(prompt=True, help="Your username.")],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, help="Your password.")],
    url: UrlOption = None,
) -> None:
    """Sign in and store a personal access token in the client config (mode 0600)."""
    client = ApiClient(resolve_connection(url, None))
    token = client.post("/api/auth/login", {"username": username, "password": password})["token"]
    path = client_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as config_file:
        json.dump({"url": client.url, "token": token}, config_file, indent=2)
    os.chmod(path, 0o600)
    typer.echo(f"Signed in to {client.url} as {username}; the token is in {path}.")


@users_app.command("add")
def users_add(
    username: UsernameArgument,
    email: Annotated[str, typer.Option(help="Where notifications go.")],
    role: Annotated[Role, typer.Option(help="viewer, developer or admin.")] = Role.developer,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True,
                                          help="At least 8 characters.")] = "",
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Create a user."""
    created = _client(url, token).post("/api/users", {"username": username, "email": email, "password": password,
                                                      "role": role.value})
    echo_json(created) if as_json else typer.echo(f"Created {created['username']} ({created['role']}).")


@users_app.command("list")
def users_list(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """List the users."""
    users = _client(url, token).get("/api/users")
    if as_json:
        echo_json(users)
        return
    rows = [[user["username"], user["email"], user["role"], "disabled" if user["disabled"] else "active",
             short_time(user["last_login_at"])] for user in users]
    echo_table(["USERNAME", "EMAIL", "ROLE", "STATE", "LAST SIGN-IN"], rows)


def _update(url: str | None, token: str | None, username: str, changes: dict[str, Any], message: str) -> None:
    _client(url, token).request("PATCH", f"/api/users/{username}", json=changes)
    typer.echo(message)


@users_app.command("disable")
def users_disable(username: UsernameArgument, url: UrlOption = None, token: TokenOption = None) -> None:
    """Disable a user: their keys and sign-ins stop working at once."""
    _update(url, token, username, {"disabled": True}, f"Disabled {username}.")


@users_app.command("enable")
def users_enable(username: UsernameArgument, url: UrlOption = None, token: TokenOption = None) -> None:
    """Enable a disabled user again."""
    _update(url, token, username, {"disabled": False}, f"Enabled {username}.")


@users_app.command("set-role")
def users_set_role(username: UsernameArgument, role: Annotated[Role, typer.Argument(help="The new role.")],
                   url: UrlOption = None, token: TokenOption = None) -> None:
    """Change a user's role."""
    _update(url, token, username, {"role": role.value}, f"{username} is now {role.value}.")


@users_app.command("reset-password")
def users_reset_password(username: UsernameArgument, url: UrlOption = None, token: TokenOption = None) -> None:
    """Give a user a new generated password (shown once) and end their sign-ins."""
    done = _client(url, token).post(f"/api/users/{username}/reset-password", {})
    typer.echo(f"New password for {username}: {done['password']}\nIt is shown only now.")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for.")],
    scope: Annotated[list[str] | None, typer.Option("--scope", help="inference or management; repeat for both.")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="A model slug the key may call; repeat.")] = None,
    expires: Annotated[datetime | None, typer.Option(help="Expiry, e.g. 2027-01-31.")] = None,
    user: Annotated[str | None, typer.Option(help="Owner, if not you (admins).")] = None,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Create an API key; the secret is printed once."""
    body: dict[str, Any] = {"name": name, "scopes": scope or ["inference"], "models": model or None,
                            "expires_at": expires.isoformat() + ("Z" if expires and not expires.tzinfo else "")
                            if expires else None, "user": user}
    issued = _client(url, token).post("/api/keys", body)
    if as_json:
        echo_json(issued)
        return
    typer.echo(f"API key {issued['prefix']}... ({', '.join(issued['scopes'])}):\n{issued['key']}\n"
               "It is shown only now; store it in a secret manager.")


@keys_app.command("list")
def keys_list(all_users: Annotated[bool, typer.Option("--all", help="Every user's keys (admins).")] = False,
              url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """List API keys (never their secrets)."""
    keys = _client(url, token).get("/api/keys", params={"all": str(all_users).lower()})
    if as_json:
        echo_json(keys)
        return
    rows = [[str(key["id"]), key["name"], key["prefix"], key["owner"], ",".join(key["scopes"]),
             ",".join(key["models"] or ["all"]), short_time(key["last_used_at"]),
             "revoked" if key["revoked_at"] else short_time(key["expires_at"]) or "never"] for key in keys]
    echo_table(["ID", "NAME", "PREFIX", "OWNER", "SCOPES", "MODELS", "LAST USED", "EXPIRES"], rows)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="Key id from `tunedock keys list`.")],
                url: UrlOption = None, token: TokenOption = None) -> None:
    """Revoke a key; requests with it fail from now on."""
    key = _client(url, token).delete(f"/api/keys/{key_id}")
    typer.echo(f"Revoked {key['prefix']}... ({key['name']}).")


def audit(
    user: Annotated[str | None, typer.Option(help="Only this username, or `system`.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. deployment.deploy.")] = None,
    target: Annotated[str | None, typer.Option(help="Only targets containing this text.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only events at or after this time (UTC).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows to show, newest first.")] = 50,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Show the audit trail (admins)."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("user", user), ("action", action), ("target", target)):
        if value is not None:
            params[name] = value
    if since is not None:
        params["since"] = since.isoformat() + ("Z" if since.tzinfo is None else "")
    items = _client(url, token).get("/api/audit", params=params)["items"]
    if as_json:
        echo_json(items)
        return
    rows = [[short_time(event["created_at"]), event["actor"], event["action"], event["target"][:50],
             event["outcome"], event["client_address"] or ""] for event in items]
    echo_table(["WHEN", "WHO", "ACTION", "TARGET", "OUTCOME", "FROM"], rows)



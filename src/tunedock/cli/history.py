"""``tunedock history``: a model's versions, one version's record, and the diff of two versions."""

from __future__ import annotations

from typing import Any

import typer

from tunedock.cli.client import ApiClient, model_path
from tunedock.cli.output import (
    echo_fields,
    echo_json,
    echo_table,
    flatten,
    format_value,
    human_duration,
    short_time,
)


def find_version(client: ApiClient, model: str, version: int) -> dict[str, Any]:
    """Return the record of one version of a model, with its deployment id as ``id``."""
    found: dict[str, Any] = client.get(f"{model_path(model)}/deployments/{version}")
    return found


def show_versions(client: ApiClient, model: str, status: str | None, limit: int, all_pages: bool,
                  as_json: bool) -> None:
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    page = client.get(f"{model_path(model)}/deployments", params=params)
    items = list(page["items"])
    while all_pages and page["next_cursor"] is not None:
        page = client.get(f"{model_path(model)}/deployments", params={**params, "cursor": page["next_cursor"]})
        items.extend(page["items"])
    if as_json:
        echo_json({"items": items, "next_cursor": page["next_cursor"]})
        return

    rows = [[("* " if d["live"] else "  ") + d["name"], short_time(d["started_at"]),
             human_duration(d["duration_seconds"]), d["deployed_by"], _status_text(d)] for d in items]
    echo_table(["  DEPLOYMENT", "DEPLOYED AT", "DURATION", "DEPLOYED BY", "STATUS"], rows)
    typer.echo("\n* live deployment")
    if page["next_cursor"] is not None:
        typer.echo(f"Older versions are not shown. --all lists them, and --limit sets how many rows show "
                   f"(now {limit}).")


def _status_text(deployment: dict[str, Any]) -> str:
    if deployment["status"] == "failed":
        return f"failed: {(deployment['failure_reason'] or '').splitlines()[0][:80]}"
    if deployment["undeployed"]:
        # The reason's kind, such as "crashed" or "superseded by X_v2", without the details.
        kind = (deployment.get("undeploy_reason") or "").split(";", 1)[0].split(":", 1)[0].strip()[:60]
        return f"{deployment['status']} (un-deployed{': ' + kind if kind else ''})"
    return str(deployment["status"])


def show_version(client: ApiClient, model: str, version: int, as_json: bool) -> None:
    record = find_version(client, model, version)
    if as_json:
        echo_json(record)
        return
    _echo_general(record["general"])
    _echo_deployment(record["deployment"])
    _echo_undeployment(record["undeployment"])


def _echo_general(general: dict[str, Any]) -> None:
    optimization = general["optimization"]
    typer.echo("General")
    echo_fields([
        ("Name", general["name"]),
        ("Model", general["model"]),
        ("Version", str(general["version"])),
        ("Description", general["description"] or "-"),
        ("Tags", ", ".join(general["tags"]) or "-"),
        ("Technique", general["technique"] or "-"),
        ("Engine", optimization.get("engine", "-")),
        ("Engine version", general["engine_version"] or "-"),
        ("Quantization", optimization.get("quantization", "-")),
        ("Files hash", general["files_hash"] or "-"),
        ("Redeploy of", general["redeploy_of"] or "-"),
    ])
    typer.echo("  Parameters")
    echo_fields([(name, format_value(value)) for name, value in flatten(general["parameters"]).items()], indent=4)
    if general["compared_with"] is None:
        typer.echo("  Changes: none, this is the first version")
        return
    typer.echo(f"  Changes vs {general['compared_with']}")
    if not general["changes"]:
        typer.echo("    none")
    echo_fields([(change["field"], f"{format_value(change['before'])} -> {format_value(change['after'])}")
                 for change in general["changes"]], indent=4)


def _echo_deployment(deployment: dict[str, Any]) -> None:
    status = deployment["status"] + (" (live)" if deployment["live"] else "")
    typer.echo("\nDeployment")
    echo_fields([
        ("Deployed by", deployment["deployed_by"]),
        ("Started at", short_time(deployment["started_at"])),
        ("Ended at", short_time(deployment["ended_at"])),
        ("Duration", human_duration(deployment["duration_seconds"])),
        ("Status", status),
        ("Failure reason", deployment["failure_reason"] or "-"),
        ("Replica failures", str(deployment["replica_failures"])),
    ])


def _echo_undeployment(undeployment: dict[str, Any] | None) -> None:
    typer.echo("\nUn-deployment")
    if undeployment is None:
        typer.echo("  none")
        return
    echo_fields([
        ("Un-deployed by", undeployment["undeployed_by"]),
        ("Reason", undeployment["reason"]),
        ("Started at", short_time(undeployment["started_at"])),
        ("Ended at", short_time(undeployment["ended_at"])),
    ])


def show_diff(client: ApiClient, model: str, first: int, second: int, as_json: bool) -> None:
    first_id = find_version(client, model, first)["id"]
    second_id = find_version(client, model, second)["id"]
    diff = client.get(f"/api/deployments/{first_id}/diff/{second_id}")
    if as_json:
        echo_json(diff)
        return
    changes = diff["changes"]
    if changes:
        rows = [[change["field"], format_value(change["before"]), format_value(change["after"])]
                for change in changes]
        echo_table(["FIELD", f"v{first}", f"v{second}"], rows)
    else:
        typer.echo(f"v{first} and v{second} differ in no field.")
    typer.echo(f"\n{len(changes)} changed, {len(diff['unchanged'])} unchanged.")

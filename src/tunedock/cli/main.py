"""Commands of the ``tunedock`` CLI."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tunedock.cli import history as history_views
from tunedock.cli.client import ApiClient, CliError, model_path, resolve_connection
from tunedock.cli.history import find_version
from tunedock.cli.accounts import audit, keys_app, login, users_app
from tunedock.cli.database import db_app
from tunedock.cli.notifications import notifications_app, unwatch, watch
from tunedock.cli.output import echo_json, echo_table, human_size, short_time
from tunedock.cli.progress import event_line, follow_job


class _JobsGroup(TyperGroup):
    """The ``jobs`` group, where ``tunedock jobs ID`` is short for ``tunedock jobs show ID``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0].isdigit():
            args = ["show", *args]
        return super().parse_args(ctx, args)


class DeploymentStatus(str, Enum):
    deploying = "deploying"
    success = "success"
    failed = "failed"


app = typer.Typer(no_args_is_help=True, help="Deploy fine-tuned language models as API endpoints.")
models_app = typer.Typer(no_args_is_help=True, help="Register, list and delete models.")
app.add_typer(models_app, name="models")
jobs_app = typer.Typer(cls=_JobsGroup, no_args_is_help=True,
                       help="Show, watch and cancel deploy and un-deploy jobs. `tunedock jobs ID` shows one.")
app.add_typer(jobs_app, name="jobs")

UrlOption = Annotated[str | None, typer.Option("--url", help="Server address; default TUNEDOCK_URL or the client config.")]
TokenOption = Annotated[str | None, typer.Option("--token", help="API key or token; default TUNEDOCK_TOKEN or the client config.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ModelArgument = Annotated[str, typer.Argument(help="Model name, slug or id.")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Show progress until the job ends, and exit with 1 if it fails.")]


def _client(url: str | None, token: str | None) -> ApiClient:
    return ApiClient(resolve_connection(url, token))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address; default TUNEDOCK_HOST or 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port; default TUNEDOCK_PORT or 8040.")] = None,
    home: Annotated[Path | None, typer.Option(help="Data directory; default TUNEDOCK_HOME or ~/.tunedock.")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Register and deploy the demo models at start.")] = False,
) -> None:
    """Run the Tunedock server until interrupted."""
    from tunedock.cli.serve import run_server

    run_server(host=host, port=port, home=home, demo=demo)


@models_app.command("add")
def models_add(
    path: Annotated[str, typer.Argument(help="Hugging Face model directory on the server's disk.")],
    name: Annotated[str, typer.Option("--name", help="Unique display name, e.g. 'Flan T5'.")],
    description: Annotated[str, typer.Option(help="Free text shown with the model.")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeat for several.")] = None,
    base_model: Annotated[str | None, typer.Option(help="The model it was fine-tuned from.")] = None,
    technique: Annotated[str | None, typer.Option(help="Fine-tuning technique, e.g. full or lora.")] = None,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Register a model from a local directory."""
    body = {"name": name, "path": str(Path(path).expanduser().resolve()), "description": description,
            "tags": tag or [], "base_model": base_model, "technique": technique}
    model = _client(url, token).post("/api/models", body)
    if as_json:
        echo_json(model)
        return
    typer.echo(f"Registered {model['name']} (slug {model['slug']}): {model['format']}, "
               f"{model['parameter_count']:,} parameters, {human_size(model['size_bytes'])}")


@models_app.command("list")
def models_list(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """List the registered models."""
    models = _client(url, token).get("/api/models")["items"]
    if as_json:
        echo_json(models)
        return
    rows = [[m["name"], m["slug"], m["format"], f"{m['parameter_count']:,}", human_size(m["size_bytes"]),
             "yes" if m["live_deployment_id"] else "no", ", ".join(m["tags"])] for m in models]
    echo_table(["NAME", "SLUG", "FORMAT", "PARAMETERS", "SIZE", "LIVE", "TAGS"], rows)


@models_app.command("delete")
def models_delete(model: ModelArgument, url: UrlOption = None, token: TokenOption = None,
                  as_json: JsonOption = False) -> None:
    """Delete a model that is not live. Its deployment history stays readable."""
    deleted = _client(url, token).delete(model_path(model))
    if as_json:
        echo_json(deleted)
        return
    typer.echo(f"Deleted model {deleted['name']}. `tunedock history {deleted['slug']}` still shows its versions.")


@app.command()
def deploy(
    model: ModelArgument,
    temperature: Annotated[float | None, typer.Option(help="Default temperature, 0 to 2; 0 is greedy.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Default maximum of generated tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Default nucleus sampling mass, above 0 up to 1.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Default top-k, 1 to 100.")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="A default stop sequence; repeat up to 4.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Requests per batch, 1 to 256.")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="Replicas to start, 1 to 10.")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Upper bound of replicas, up to 50.")] = None,
    scale_up_delay: Annotated[float | None, typer.Option(
        help="Seconds of high load before a replica is added (default 30).")] = None,
    scale_down_delay: Annotated[float | None, typer.Option(
        help="Seconds of low load before a replica is removed (default 300).")] = None,
    idle_undeploy_after: Annotated[float | None, typer.Option(
        help="Seconds without requests before the system un-deploys it (default: never).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per replica.")] = None,
    engine: Annotated[str | None, typer.Option(help="transformers, ctranslate2 or vllm.")] = None,
    quantization: Annotated[str | None, typer.Option(
        help="Weight quantization: none (the stored precision, but float32 with --engine transformers on CPU). "
             "With --engine transformers also float32 or bfloat16, and float16 on CUDA. bfloat16 halves the "
             "memory of float32 weights but may run slower on CPUs without native bfloat16 support. "
             "With --engine ctranslate2 also int8, int8_float32, int16 "
             "or float32 (CPU) and int8_float16, float16 or bfloat16 (CUDA). The engine must "
             "support it on the device.")] = None,
    description: Annotated[str, typer.Option(help="What this version changes.")] = "",
    wait: WaitOption = False,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Deploy a model as a new version with the given parameters."""
    sections = {
        "generation": {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p, "top_k": top_k,
                       "stop": stop or None},
        "scaling": {"max_batch_size": max_batch_size, "min_replicas": min_replicas, "max_replicas": max_replicas,
                    "scale_up_delay": scale_up_delay, "scale_down_delay": scale_down_delay,
                    "idle_undeploy_after": idle_undeploy_after},
        "hardware": {"device": device, "threads": threads},
        "optimization": {"engine": engine, "quantization": quantization},
    }
    body: dict[str, Any] = {"description": description}
    for section, values in sections.items():
        body[section] = {key: value for key, value in values.items() if value is not None}
    client = _client(url, token)
    accepted = client.post(f"{model_path(model)}/deployments", body)
    _report_deploy(client, accepted, f"Deploying {accepted['deployment']['name']}", wait, as_json)


@app.command()
def redeploy(
    model: ModelArgument,
    version: Annotated[int, typer.Option("--version", help="The version whose parameters are deployed again.")],
    description: Annotated[str | None, typer.Option(
        help="What this version is for (default 'Redeploy of <deployment name>').")] = None,
    allow_changed_files: Annotated[bool, typer.Option(
        "--allow-changed-files", help="Redeploy even if the model files changed since that version ran.")] = False,
    wait: WaitOption = False,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Deploy a new version with the parameters of an earlier one, e.g. to roll back."""
    client = _client(url, token)
    origin = find_version(client, model, version)
    body: dict[str, Any] = {"allow_changed_files": allow_changed_files}
    if description is not None:
        body["description"] = description
    accepted = client.post(f"/api/deployments/{origin['id']}/redeploy", body)
    action = f"Redeploying {origin['general']['name']} as {accepted['deployment']['name']}"
    _report_deploy(client, accepted, action, wait, as_json)


def _report_deploy(client: ApiClient, accepted: dict[str, Any], action: str, wait: bool, as_json: bool) -> None:
    job = accepted["job"]
    title = f"{action} (job {job['id']})"
    if not wait:
        if as_json:
            echo_json(accepted)
        else:
            typer.echo(f"{title}. `tunedock jobs watch {job['id']}` shows its progress.")
        return
    ended = follow_job(client, job, title, quiet=as_json)
    _report_end(ended, as_json, f"{accepted['deployment']['name']} is live.")


def _report_end(job: dict[str, Any], as_json: bool, success_message: str) -> None:
    """Print how a job ended, and raise CliError (exit status 1) if it failed."""
    if as_json:
        echo_json(job)
    if job["status"] != "success":
        raise CliError(f"Job {job['id']} ({job['action']}) {job['status']}: {job['error']}")
    if not as_json:
        typer.echo(success_message)


@app.command()
def undeploy(
    model: ModelArgument,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the replicas have stopped.")] = True,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Take down the live deployment of a model."""
    client = _client(url, token)
    found = client.get(model_path(model))
    if found["live_deployment_id"] is None:
        raise CliError(f"Model {found['name']} has no live deployment; `tunedock history {found['slug']}` "
                       "shows its versions.")
    job = client.post(f"/api/deployments/{found['live_deployment_id']}/undeploy")
    title = f"Un-deploying the live deployment of {found['name']} (job {job['id']})"
    if not wait:
        if as_json:
            echo_json(job)
        else:
            typer.echo(f"{title}. `tunedock jobs watch {job['id']}` shows its progress.")
        return
    ended = follow_job(client, job, title, quiet=as_json)
    _report_end(ended, as_json, f"Un-deployed {found['name']}.")


@app.command()
def history(
    model: ModelArgument,
    status: Annotated[DeploymentStatus | None, typer.Option(help="List only versions with this status.")] = None,
    limit: Annotated[int, typer.Option(
        min=1, max=200, help="Versions to list, newest first. With --all, the versions fetched per request.")] = 50,
    all_pages: Annotated[bool, typer.Option("--all", help="List every version, page after page.")] = False,
    version: Annotated[int | None, typer.Option("--version", help="Show the full record of this version.")] = None,
    diff: Annotated[tuple[int, int] | None, typer.Option(
        "--diff", metavar="A B", help="Compare versions A and B field by field.")] = None,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Show a model's deployment history, one version's record, or what changed between two versions."""
    if version is not None and diff is not None:
        raise typer.BadParameter("pass either --version or --diff, not both.", param_hint="--version / --diff")
    if (version is not None or diff is not None) and (status is not None or all_pages):
        raise typer.BadParameter("--status and --all filter the list of versions, so drop them with --version or --diff.",
                                 param_hint="--status / --all")

    client = _client(url, token)
    if version is not None:
        history_views.show_version(client, model, version, as_json)
    elif diff is not None:
        history_views.show_diff(client, model, diff[0], diff[1], as_json)
    else:
        chosen_status = status.value if status is not None else None
        history_views.show_versions(client, model, chosen_status, limit, all_pages, as_json)


@app.command()
def endpoint(
    model: ModelArgument,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Show a model's endpoint and ready-to-run calls in cURL, Python and JavaScript."""
    found = _client(url, token).get(f"{model_path(model)}/endpoint")
    if as_json:
        echo_json(found)
        return
    typer.echo(f"Endpoint: {found['url']}   model: {found['model']}   live: {found['live_deployment'] or 'none'}")
    if found["live_deployment"] is None:
        typer.echo(f"Model {found['model']} has no live deployment: these calls answer 503 until "
                   f"`tunedock deploy {found['model']}` succeeds.")
    typer.echo("Set TUNEDOCK_API_KEY to an API key with the inference scope first.")
    for title, key in (("cURL", "curl"), ("Python", "python"), ("JavaScript", "javascript")):
        typer.echo(f"\n--- {title} ---\n{found['snippets'][key].rstrip()}")


JobArgument = Annotated[int, typer.Argument(help="Job id, as printed by deploy, redeploy and undeploy.")]


@jobs_app.command("show")
def jobs_show(job_id: JobArgument, url: UrlOption = None, token: TokenOption = None,
              as_json: JsonOption = False) -> None:
    """Show one job with its progress events."""
    job = _client(url, token).get(f"/api/jobs/{job_id}")
    if as_json:
        echo_json(job)
        return
    typer.echo(f"Job {job['id']}: {job['action']} of deployment {job['deployment_id']}, {job['status']}, "
               f"created by {job['created_by']} at {short_time(job['created_at'])}")
    if job["error"]:
        typer.echo(f"Error: {job['error']}")
    for event in job["events"]:
        typer.echo(event_line(job, event))


@jobs_app.command("watch")
def jobs_watch(job_id: JobArgument, url: UrlOption = None, token: TokenOption = None,
               as_json: JsonOption = False) -> None:
    """Show a job's progress live until it ends, and exit with 1 if it fails."""
    client = _client(url, token)
    job = client.get(f"/api/jobs/{job_id}")
    ended = follow_job(client, job, f"Job {job_id}: {job['action']} of deployment {job['deployment_id']}",
                       quiet=as_json)
    _report_end(ended, as_json, f"Job {job_id} succeeded.")


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobArgument, url: UrlOption = None, token: TokenOption = None,
                as_json: JsonOption = False) -> None:
    """Cancel a deploy job in progress. Its deployment ends failed, as cancelled."""
    job = _client(url, token).post(f"/api/jobs/{job_id}/cancel")
    if as_json:
        echo_json(job)
    elif job["status"] == "in_progress":
        typer.echo(f"Cancel of job {job_id} requested. `tunedock jobs watch {job_id}` shows when it ends.")
    else:
        typer.echo(f"Job {job_id} {job['status']}: {job['error']}")


app.command()(watch)
app.command()(unwatch)
app.add_typer(notifications_app, name="notifications")
app.command()(login)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.command()(audit)
app.add_typer(db_app, name="db")


def main() -> None:
    try:
        app()
    except CliError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from exc

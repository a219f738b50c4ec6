"""Commands of the ``tunedock`` CLI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from tunedock.cli.client import ApiClient, CliError, resolve_connection
from tunedock.cli.output import echo_json, echo_table, human_duration, human_size, short_time

app = typer.Typer(no_args_is_help=True, help="Deploy fine-tuned language models as API endpoints.")
models_app = typer.Typer(no_args_is_help=True, help="Register and list models.")
app.add_typer(models_app, name="models")

UrlOption = Annotated[str | None, typer.Option("--url", help="Server address; default TUNEDOCK_URL or the client config.")]
TokenOption = Annotated[str | None, typer.Option("--token", help="API key or token; default TUNEDOCK_TOKEN or the client config.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
POLL_SECONDS = 0.5


def _client(url: str | None, token: str | None) -> ApiClient:
    return ApiClient(resolve_connection(url, token))


def _model_path(model: str) -> str:
    return f"/api/models/{quote(model, safe='')}"


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


@app.command()
def deploy(
    model: Annotated[str, typer.Argument(help="Model name, slug or id.")],
    temperature: Annotated[float | None, typer.Option(help="Default temperature, 0 to 2; 0 is greedy.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Default maximum of generated tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Default nucleus sampling mass, above 0 up to 1.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Default top-k, 1 to 100.")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="A default stop sequence; repeat up to 4.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Requests per batch, 1 to 256.")] = None,
    min_replicas: Annotated[int | None, typer.Option(help="Replicas to start, 1 to 10.")] = None,
    max_replicas: Annotated[int | None, typer.Option(help="Upper bound of replicas, up to 50.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per replica.")] = None,
    engine: Annotated[str | None, typer.Option(help="transformers, ctranslate2 or vllm.")] = None,
    description: Annotated[str, typer.Option(help="What this version changes.")] = "",
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the job ends; exit 1 if it fails.")] = False,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Deploy a model as a new version with the given parameters."""
    sections = {
        "generation": {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p, "top_k": top_k,
                       "stop": stop or None},
        "scaling": {"max_batch_size": max_batch_size, "min_replicas": min_replicas, "max_replicas": max_replicas},
        "hardware": {"device": device, "threads": threads},
        "optimization": {"engine": engine},
    }
    body: dict[str, Any] = {"description": description}
    for section, values in sections.items():
        body[section] = {key: value for key, value in values.items() if value is not None}
    client = _client(url, token)
    accepted = client.post(f"{_model_path(model)}/deployments", body)
    if not wait:
        echo_json(accepted) if as_json else typer.echo(
            f"Deploying {accepted['deployment']['name']} (job {accepted['job']['id']})")
        return
    job = _follow_job(client, accepted["job"]["id"], quiet=as_json)
    if as_json:
        echo_json(job)
    if job["status"] != "success":
        raise typer.Exit(1)


@app.command()
def undeploy(
    model: Annotated[str, typer.Argument(help="Model name, slug or id.")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the replicas have stopped.")] = True,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Take down the live deployment of a model."""
    client = _client(url, token)
    found = client.get(_model_path(model))
    if found["live_deployment_id"] is None:
        raise CliError(f"Model {found['name']} has no live deployment; `tunedock history {found['slug']}` "
                       "shows its versions.")
    job = client.post(f"/api/deployments/{found['live_deployment_id']}/undeploy")
    if wait:
        job = _follow_job(client, job["id"], quiet=as_json)
    if as_json:
        echo_json(job)
    if job["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def history(
    model: Annotated[str, typer.Argument(help="Model name, slug or id.")],
    limit: Annotated[int, typer.Option(help="Rows to show, newest first.")] = 50,
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Show the deployment history of a model, newest first."""
    page = _client(url, token).get(f"{_model_path(model)}/deployments", params={"limit": limit})
    if as_json:
        echo_json(page)
        return
    rows = [[("* " if d["live"] else "  ") + d["name"], short_time(d["started_at"]),
             human_duration(d["duration_seconds"]), d["deployed_by"], _status_text(d)] for d in page["items"]]
    echo_table(["  DEPLOYMENT", "DEPLOYED AT", "DURATION", "DEPLOYED BY", "STATUS"], rows)
    typer.echo("\n* live deployment")


def _status_text(deployment: dict[str, Any]) -> str:
    if deployment["status"] == "failed":
        return f"failed: {(deployment['failure_reason'] or '').splitlines()[0][:80]}"
    if deployment["undeployed"]:
        return f"{deployment['status']} (un-deployed)"
    return str(deployment["status"])


@app.command()
def endpoint(
    model: Annotated[str, typer.Argument(help="Model name, slug or id.")],
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Show a model's endpoint and ready-to-run calls in cURL, Python and JavaScript."""
    found = _client(url, token).get(f"{_model_path(model)}/endpoint")
    if as_json:
        echo_json(found)
        return
    typer.echo(f"Endpoint: {found['url']}   model: {found['model']}   live: {found['live_deployment'] or 'none'}")
    typer.echo("Set TUNEDOCK_API_KEY to an API key with the inference scope first.")
    for title, key in (("cURL", "curl"), ("Python", "python"), ("JavaScript", "javascript")):
        typer.echo(f"\n--- {title} ---\n{found['snippets'][key].rstrip()}")


@app.command()
def jobs(
    job_id: Annotated[int, typer.Argument(help="Job id, as printed by deploy and undeploy.")],
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Show one job with its progress events."""
    job = _client(url, token).get(f"/api/jobs/{job_id}")
    if as_json:
        echo_json(job)
        return
    typer.echo(f"Job {job['id']}: {job['action']} {job['status']}")
    for event in job["events"]:
        typer.echo(f"  {short_time(event['created_at'])}  {event['message']}")


def _follow_job(client: ApiClient, job_id: int, quiet: bool) -> dict[str, Any]:
    """Poll a job, printing each new progress event, until it ends."""
    shown = 0
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}")
        if not quiet:
            for event in job["events"][shown:]:
                typer.echo(f"  [{event['stage']}] {event['message']}")
        shown = len(job["events"])
        if job["status"] != "in_progress":
            return job
        time.sleep(POLL_SECONDS)


def main() -> None:
    try:
        app()
    except CliError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise SystemExit(1) from exc

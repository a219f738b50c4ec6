"""``tunedock serve --demo``: register and deploy the demo models, then show how to call them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy import select

from tunedock.accounts.identity import SCOPES, Principal
from tunedock.deployments import records
from tunedock.deployments.manager import DeployRequest
from tunedock.deployments.parameters import DeploymentParameters, GenerationDefaults
from tunedock.demo.registry import DemoModel, demo_models
from tunedock.endpoints import KEY_VARIABLE, snippets
from tunedock.errors import NotFound, TunedockError
from tunedock.services import Services
from tunedock.store.tables import Model, User

logger = logging.getLogger(__name__)

JOB_POLL_SECONDS = 0.5


async def launch_demo(services: Services, announce: Callable[[str], None]) -> None:
    principal = await asyncio.to_thread(_admin_principal, services)
    for demo in demo_models():
        try:
            model = await asyncio.to_thread(_registered_model, services, principal, demo)
            await _ensure_live(services, principal, model, demo)
        except TunedockError as exc:
            logger.error("demo model %s could not be deployed: %s", demo.name, exc.message)
            announce(f"Demo model {demo.name} could not be deployed: {exc.message}")
            continue
        announce(_usage_text(services, model, demo))
    announce(f"The CLI and these calls use the API key stored as 'token' in {services.settings.client_config_path}.")


def _admin_principal(services: Services) -> Principal:
    with services.database.session() as session:
        admin = session.scalars(select(User).where(User.role == "admin").order_by(User.id)).first()
        if admin is None:
            raise NotFound("No admin user exists to register the demo models.")
        return Principal(user_id=admin.id, username=admin.username, role=admin.role, key_prefix="",
                         scopes=SCOPES, models=None)


def _registered_model(services: Services, principal: Principal, demo: DemoModel) -> Model:
    try:
        return services.registry.get(demo.name)
    except NotFound:
        return services.registry.register(principal, demo.name, str(demo.path), demo.description, demo.tags)


async def _ensure_live(services: Services, principal: Principal, model: Model, demo: DemoModel) -> None:
    if services.routing.get(model.slug) is not None:
        return
    generation = GenerationDefaults(temperature=0, max_tokens=16)
    request = DeployRequest(DeploymentParameters(generation=generation), description="demo deployment")
    created = await services.deployments.deploy(principal, model.slug, request)
    while True:
        job, _ = await asyncio.to_thread(records.get_job, services.database, created.job.id)
        if job.status != "in_progress":
            break
        await asyncio.sleep(JOB_POLL_SECONDS)
    if job.status == "failed":
        raise TunedockError(f"{created.deployment.name} failed: {job.error}")


def _usage_text(services: Services, model: Model, demo: DemoModel) -> str:
    base_url = services.settings.base_url
    curl = snippets(base_url, model.slug, model.format, demo.example_input)["curl"]
    return (f"\n{demo.name} is live at {base_url}/v1 as model {model.slug!r}. Try it "
            f"(with {KEY_VARIABLE} set to your API key):\n{curl}\n")

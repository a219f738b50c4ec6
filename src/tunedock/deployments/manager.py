"""The deployment manager: runs deploy and un-deploy jobs and keeps replicas serving.

The HTTP layers and the CLI reach deployments only through this class. It writes each
state change to the store (``records``) before acting on it, then updates the routing
table that the gateway reads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunedock.accounts.identity import SYSTEM, Principal
from tunedock.deployments import records
from tunedock.deployments.parameters import DeploymentParameters
from tunedock.deployments.routing import ReplicaTarget, Route, RoutingTable
from tunedock.errors import Conflict, TunedockError
from tunedock.replicas.backend import ReplicaBackend, ReplicaSpec, RunningReplica
from tunedock.store.database import Database
from tunedock.store.tables import Deployment, Job, Model

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "interrupted: server restarted"


@dataclass(frozen=True)
class DeployRequest:
    parameters: DeploymentParameters
    description: str = ""


class DeploymentManager:
    def __init__(self, database: Database, backend: ReplicaBackend, routing: RoutingTable,
                 logs_dir: Path) -> None:
        self.database = database
        self.backend = backend
        self.routing = routing
        self.logs_dir = logs_dir
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._replicas: dict[int, list[tuple[int, RunningReplica]]] = {}

    # Requests from the API -------------------------------------------------------------

    async def deploy(self, principal: Principal, model_reference: str,
                     request: DeployRequest) -> records.NewDeployment:
        created = await asyncio.to_thread(
            records.allocate_deployment, self.database, model_reference,
            request.parameters.model_dump(mode="json"), request.description,
            principal.user_id, principal.username,
        )
        logger.info("deployment %s (%s) requested by %s as job %s", created.deployment.id,
                    created.deployment.name, principal.username, created.job.id)
        self._launch(created.job.id, self._run_deploy(created.job, created.deployment, created.model))
        return created

    async def undeploy(self, principal: Principal, deployment_id: int) -> Job:
        deployment = await asyncio.to_thread(records.get_deployment, self.database, deployment_id)
        _check_undeployable(deployment)
        job = await asyncio.to_thread(records.create_undeploy_job, self.database, deployment_id,
                                      principal.username, "manual")
        logger.info("un-deploy of deployment %s requested by %s as job %s", deployment_id,
                    principal.username, job.id)
        self._launch(job.id, self._run_undeploy(job.id, deployment))
        return job

    def _launch(self, job_id: int, work: Any) -> None:
        task = asyncio.create_task(work, name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def wait_for_jobs(self) -> None:
        """Wait until every job started by this process has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    # Deploy ------------------------------------------------------------------------------

    async def _run_deploy(self, job: Job, deployment: Deployment, model: Model) -> None:
        parameters = DeploymentParameters.model_validate(deployment.parameters)
        try:
            started = await self._start_replicas(job.id, deployment, model, parameters)
        except TunedockError as exc:
            await self._fail_deploy(job.id, deployment, exc.message)
            return
        except asyncio.CancelledError:
            await self._fail_deploy(job.id, deployment, INTERRUPTED_REASON)
            raise
        except Exception as exc:  # noqa: BLE001 - any bug must still end the job, not leave it in_progress
            logger.exception("deploy job %s of deployment %s failed unexpectedly", job.id, deployment.id)
            await self._fail_deploy(job.id, deployment, f"internal error while deploying: {exc}")
            return
        await self._switch_traffic(job.id, deployment, model, started)
        await asyncio.to_thread(records.finish_job, self.database, job.id)
        logger.info("deployment %s (%s) is live", deployment.id, deployment.name)

    async def _start_replicas(self, job_id: int, deployment: Deployment, model: Model,
                              parameters: DeploymentParameters) -> list[tuple[int, RunningReplica]]:
        count = parameters.scaling.min_replicas
        self._replicas[deployment.id] = []
        for index in range(count):
            await self._event(job_id, "starting_replica", f"Starting replica {index + 1} of {count}")
            spec = self._replica_spec(deployment, model, parameters, index)
            replica_id, replica = await self._start_one(deployment.id, spec)
            self._replicas[deployment.id].append((replica_id, replica))
            await self._event(job_id, "health_check_passed",
                              f"Replica {index + 1} of {count} passed its health check (pid {replica.pid})")
        return self._replicas[deployment.id]

    async def _start_one(self, deployment_id: int, spec: ReplicaSpec) -> tuple[int, RunningReplica]:
        # TODO: the replica row is written only once the process is ready, so a control-plane
        # crash during a model load leaves a model-server process that no restart will find.
        replica = await self.backend.start(spec)
        replica_id = await asyncio.to_thread(records.add_replica, self.database, deployment_id,
                                             spec.replica_index, replica.pid, str(spec.log_path))
        await asyncio.to_thread(records.set_replica_state, self.database, replica_id, "ready", replica.port)
        return replica_id, replica

    def _replica_spec(self, deployment: Deployment, model: Model, parameters: DeploymentParameters,
                      index: int) -> ReplicaSpec:
        log_name = f"deployment-{deployment.id}-replica-{index}.log"
        return ReplicaSpec(
            deployment_id=deployment.id, replica_index=index, model_path=model.source_path,
            model_format=model.format, served_model=model.slug,
            engine=parameters.optimization.engine, device=parameters.hardware.device,
            threads=parameters.hardware.threads,
            generation_defaults=parameters.generation.model_dump(mode="json"),
            log_path=self.logs_dir / log_name,
        )

    async def _switch_traffic(self, job_id: int, deployment: Deployment, model: Model,
                              started: list[tuple[int, RunningReplica]]) -> None:
        await self._event(job_id, "switching_traffic", f"Routing {model.slug} to {deployment.name}")
        previous_id = await asyncio.to_thread(records.make_live, self.database, deployment.id)
        self._route(model, deployment, [replica for _, replica in started])
        if previous_id is not None and previous_id != deployment.id:
            await self._event(job_id, "draining_previous", f"Un-deploying the previous live version {previous_id}")
            await self._retire(previous_id, f"superseded by {deployment.name}")

    async def _fail_deploy(self, job_id: int, deployment: Deployment, reason: str) -> None:
        logger.warning("deployment %s (%s) failed: %s", deployment.id, deployment.name, reason)
        await self._stop_replicas(deployment.id)
        await asyncio.to_thread(records.mark_deploy_failed, self.database, deployment.id, reason)
        await asyncio.to_thread(records.finish_job, self.database, job_id, reason)

    # Un-deploy ---------------------------------------------------------------------------

    async def _run_undeploy(self, job_id: int, deployment: Deployment) -> None:
        try:
            await self._take_down(deployment.id)
        except Exception as exc:  # noqa: BLE001 - the job must end with a reason, not hang
            logger.exception("un-deploy job %s of deployment %s failed", job_id, deployment.id)
            await asyncio.to_thread(records.finish_job, self.database, job_id, f"un-deploy failed: {exc}")
            return
        await asyncio.to_thread(records.finish_job, self.database, job_id)
        logger.info("deployment %s (%s) un-deployed", deployment.id, deployment.name)

    async def _retire(self, deployment_id: int, reason: str) -> None:
        """Un-deploy a deployment on the system's behalf, recording why."""
        await asyncio.to_thread(records.start_undeploy, self.database, deployment_id, SYSTEM, reason)
        await self._take_down(deployment_id)
        logger.info("deployment %s un-deployed by the system: %s", deployment_id, reason)

    async def _take_down(self, deployment_id: int) -> None:
        deployment = await asyncio.to_thread(records.get_deployment, self.database, deployment_id)
        model = await asyncio.to_thread(records.get_model_of, self.database, deployment)
        await asyncio.to_thread(records.clear_live, self.database, deployment_id)
        self.routing.remove(model.slug, deployment_id)
        await self._stop_replicas(deployment_id)
        await asyncio.to_thread(records.mark_undeployed, self.database, deployment_id)

    async def _stop_replicas(self, deployment_id: int) -> None:
        running = self._replicas.pop(deployment_id, [])
        for replica_id, replica in running:
            await self.backend.stop(replica)
            await asyncio.to_thread(records.set_replica_state, self.database, replica_id, "stopped")

    # Start-up and shut-down --------------------------------------------------------------

    async def restore(self) -> None:
        """Fail jobs a previous server process left unfinished and bring live deployments back."""
        for job in await asyncio.to_thread(records.interrupted_jobs, self.database):
            await self._settle_interrupted(job)
        for model, deployment in await asyncio.to_thread(records.live_deployments, self.database):
            try:
                await self._restore_live(model, deployment)
            except TunedockError as exc:
                logger.error("live deployment %s (%s) could not be restored: %s", deployment.id,
                             deployment.name, exc.message)
        await self._stop_orphans()

    async def _settle_interrupted(self, job: Job) -> None:
        deployment = await asyncio.to_thread(records.get_deployment, self.database, job.deployment_id)
        logger.warning("job %s (%s of %s) was interrupted by a restart", job.id, job.action, deployment.name)
        if job.action == "deploy":
            await asyncio.to_thread(records.mark_deploy_failed, self.database, deployment.id, INTERRUPTED_REASON)
            await asyncio.to_thread(records.finish_job, self.database, job.id, INTERRUPTED_REASON)
            return
        await asyncio.to_thread(records.clear_live, self.database, deployment.id)
        await asyncio.to_thread(records.mark_undeployed, self.database, deployment.id)
        await asyncio.to_thread(records.finish_job, self.database, job.id)

    async def _restore_live(self, model: Model, deployment: Deployment) -> None:
        adopted: list[tuple[int, RunningReplica]] = []
        for row in await asyncio.to_thread(records.active_replicas, self.database, deployment.id):
            replica = None
            if row.pid is not None and row.port is not None:
                replica = await self.backend.adopt(row.pid, row.port, Path(row.log_path))
            if replica is None:
                await asyncio.to_thread(records.set_replica_state, self.database, row.id, "stopped")
                continue
            logger.info("adopted replica pid %s of deployment %s", replica.pid, deployment.name)
            adopted.append((row.id, replica))
        parameters = DeploymentParameters.model_validate(deployment.parameters)
        for index in range(len(adopted), parameters.scaling.min_replicas):
            spec = self._replica_spec(deployment, model, parameters, index)
            adopted.append(await self._start_one(deployment.id, spec))
        self._replicas[deployment.id] = adopted
        self._route(model, deployment, [replica for _, replica in adopted])
        logger.info("live deployment %s serves %s again", deployment.name, model.slug)

    async def _stop_orphans(self) -> None:
        """Stop processes recorded as running for deployments that are not live."""
        for row in await asyncio.to_thread(records.active_replicas, self.database):
            if row.deployment_id in self._replicas:
                continue
            if row.pid is not None:
                replica = RunningReplica(pid=row.pid, port=row.port or 0, log_path=Path(row.log_path))
                await self.backend.stop(replica)
            await asyncio.to_thread(records.set_replica_state, self.database, row.id, "stopped")

    async def shutdown(self) -> None:
        """Cancel running jobs and stop every replica; live deployments stay live in the store."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        for deployment_id in list(self._replicas):
            await self._stop_replicas(deployment_id)
        await self.backend.close()
        logger.info("deployment manager stopped")

    # Helpers -----------------------------------------------------------------------------

    def _route(self, model: Model, deployment: Deployment, replicas: list[RunningReplica]) -> None:
        targets = [ReplicaTarget(replica=replica) for replica in replicas]
        self.routing.set(Route(model_id=model.id, slug=model.slug, deployment_id=deployment.id,
                               deployment_name=deployment.name,
                               created=int(model.created_at.timestamp()), targets=targets))

    async def _event(self, job_id: int, stage: str, message: str) -> None:
        await asyncio.to_thread(records.add_event, self.database, job_id, stage, message)


def _check_undeployable(deployment: Deployment) -> None:
    if deployment.status == "deploying":
        raise Conflict(f"Deployment {deployment.name} is still deploying; wait for its job to finish, "
                       "then un-deploy it.", code="deployment_in_progress")
    if deployment.status == "failed":
        raise Conflict(f"Deployment {deployment.name} failed and runs nothing; there is nothing to "
                       "un-deploy.", code="deployment_failed")
    if deployment.undeploy_started_at is not None:
        raise Conflict(f"Deployment {deployment.name} is already un-deployed (by {deployment.undeployed_by}).",
                       code="already_undeployed")

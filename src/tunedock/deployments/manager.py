"""The deployment manager: runs deploy and un-deploy jobs and keeps replicas serving.

The HTTP layers and the CLI reach deployments only through this class. It writes each
state change to the store (``records``) before acting on it, then updates the routing
table that the gateway reads. Deploys of one model run one at a time, in version order,
so that each new version supersedes the one before it without a gap in serving.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tunedock.accounts import audit
from tunedock.accounts.audit import SYSTEM_ACTOR
from tunedock.accounts.identity import SYSTEM, Principal
from tunedock.catalog.fingerprint import directory_hash
from tunedock.conversion import prepare_weights
from tunedock.deployments import records
from tunedock.deployments.hardware import cuda_device_count, machine_quantizations
from tunedock.deployments.parameters import (
    DeploymentParameters,
    DeployTarget,
    check_deployable,
    resolve_defaults,
)
from tunedock.deployments.routing import ReplicaTarget, Route, RoutingTable
from tunedock.deployments.supervision import CrashRecord, LoadTracker, SupervisionPolicy
from tunedock.errors import Conflict, TunedockError
from tunedock.notifier.outbox import Outbox
from tunedock.replicas.backend import ReplicaBackend, ReplicaSpec, RunningReplica
from tunedock.store.database import Database
from tunedock.store.tables import Deployment, Job, Model, Replica

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "interrupted: server restarted"
ENGINE_PACKAGES = {"transformers": "transformers", "ctranslate2": "ctranslate2", "vllm": "vllm"}


@dataclass(frozen=True)
class DeployRequest:
    parameters: DeploymentParameters
    description: str = ""


@dataclass
class Serving:
    """A live deployment's route with the supervision state of its replicas."""

    route: Route
    parameters: DeploymentParameters
    model: Model
    deployment: Deployment
    crashes: CrashRecord
    load: LoadTracker = field(default_factory=LoadTracker)
    failed_checks: dict[int, int] = field(default_factory=dict)  # replica row id -> consecutive failures
    repairing: bool = False
    warned_for: float | None = None  # the last_request_at that an idle warning was sent for


class DeploymentManager:
    def __init__(self, database: Database, backend: ReplicaBackend, routing: RoutingTable,
                 logs_dir: Path, policy: SupervisionPolicy | None = None, outbox: Outbox | None = None,
                 weights_dir: Path | None = None) -> None:
        self.database = database
        self.weights_dir = weights_dir or logs_dir / "weights"
        self._weights: dict[int, str] = {}  # deployment id -> directory its replicas load
        self.outbox = outbox
        self.backend = backend
        self.routing = routing
        self.logs_dir = logs_dir
        self.policy = policy or SupervisionPolicy()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[int, str] = {}
        self._model_locks: dict[int, asyncio.Lock] = {}
        # Replicas of deployments that are starting, keyed by deployment id.
        self._starting: dict[int, list[ReplicaTarget]] = {}
        self._serving: dict[int, Serving] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        # Set to run the next supervision round at once, rather than at the end of the interval.
        self._check_soon = asyncio.Event()

    # Requests from the API -------------------------------------------------------------

    async def deploy(self, principal: Principal, model_reference: str,
                     request: DeployRequest) -> records.NewDeployment:
        model = await asyncio.to_thread(records.find_live_model, self.database, model_reference)
        target = self._target(model)
        parameters = resolve_defaults(request.parameters, target)
        check_deployable(parameters, target)
        allocation = records.Allocation(
            parameters=parameters.model_dump(mode="json"), description=request.description,
            user_id=principal.user_id, username=principal.username,
            engine_version=engine_version(parameters.optimization.engine),
        )
        return await self._allocate_and_launch(principal, model_reference, allocation)

    async def redeploy(self, principal: Principal, deployment_id: int, description: str | None,
                       allow_changed_files: bool) -> records.NewDeployment:
        """Deploy a new version with the parameters of an earlier one."""
        record = await asyncio.to_thread(records.deployment_record, self.database, deployment_id)
        origin, model = record.deployment, record.model
        if model.deleted_at is not None:
            raise Conflict(f"Model {model.name!r} was deleted; its versions can be read but not redeployed.",
                           code="model_deleted")
        files_hash = await asyncio.to_thread(directory_hash, model.source_path)
        if origin.files_hash is not None and files_hash != origin.files_hash and not allow_changed_files:
            raise Conflict(
                f"The files of {model.name!r} in {model.source_path} have changed since {origin.name} "
                f"ran ({origin.files_hash[:19]}... then, {files_hash[:19]}... now); pass "
                "allow_changed_files=true (CLI: --allow-changed-files) to redeploy its parameters on the "
                "current files.", code="model_files_changed",
                details={"then": origin.files_hash, "now": files_hash})
        parameters = DeploymentParameters.model_validate(origin.parameters)
        check_deployable(parameters, self._target(model))
        allocation = records.Allocation(
            parameters=parameters.model_dump(mode="json"),
            description=description if description is not None else f"Redeploy of {origin.name}",
            user_id=principal.user_id, username=principal.username,
            engine_version=engine_version(parameters.optimization.engine), files_hash=files_hash,
            origin=origin,
        )
        return await self._allocate_and_launch(principal, str(model.id), allocation)

    async def _allocate_and_launch(self, principal: Principal, model_reference: str,
                                   allocation: records.Allocation) -> records.NewDeployment:
        created = await asyncio.to_thread(records.allocate_deployment, self.database, model_reference, allocation)
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

    async def cancel(self, principal: Principal, job_id: int) -> Job:
        """Cancel a deploy in progress: its replicas stop and it fails as cancelled."""
        job = await asyncio.to_thread(records.request_cancel, self.database, job_id, principal.username)
        task = self._tasks.get(job_id)
        if task is not None:
            self._cancel_reasons.setdefault(job_id, f"cancelled by {job.cancel_requested_by}")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        logger.info("deploy job %s cancelled by %s", job_id, principal.username)
        return job

    def _launch(self, job_id: int, work: Any) -> None:
        task = asyncio.create_task(work, name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def wait_for_jobs(self) -> None:
        """Wait until every job started by this process has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def _target(self, model: Model) -> DeployTarget:
        return DeployTarget(model_name=model.name, context_length=model.context_length,
                            cuda_devices=cuda_device_count(), model_format=model.format,
                            machine_types=machine_quantizations(),
                            min_idle_undeploy_after=self.policy.min_idle_undeploy_after)

    # Deploy ------------------------------------------------------------------------------

    async def _run_deploy(self, job: Job, deployment: Deployment, model: Model) -> None:
        lock = self._model_locks.setdefault(model.id, asyncio.Lock())
        try:
            if lock.locked():
                await self._event(job.id, "waiting", f"Waiting for the earlier deploy of {model.name} to end")
            async with lock:
                await self._deploy_steps(job, deployment, model)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(job.id, INTERRUPTED_REASON)
            await self._fail_deploy(job.id, deployment, reason)
            if reason == INTERRUPTED_REASON:
                raise
        except TunedockError as exc:
            await self._fail_deploy(job.id, deployment, exc.message)
        except Exception as exc:  # noqa: BLE001 - any bug must still end the job, not leave it in_progress
            logger.exception("deploy job %s of deployment %s failed unexpectedly", job.id, deployment.id)
            await self._fail_deploy(job.id, deployment, f"internal error while deploying: {exc}")

    async def _deploy_steps(self, job: Job, deployment: Deployment, model: Model) -> None:
        parameters = DeploymentParameters.model_validate(deployment.parameters)
        optimization = parameters.optimization
        await self._event(job.id, "validating",
                          f"Parameters valid: engine {optimization.engine} {deployment.engine_version or ''}"
                          f" on {parameters.hardware.device}, {parameters.scaling.min_replicas} replica(s)")
        await self._event(job.id, "preparing_weights", f"Hashing the model files in {model.source_path}")
        files_hash = await asyncio.to_thread(directory_hash, model.source_path)
        await asyncio.to_thread(records.set_files_hash, self.database, deployment.id, files_hash)
        await self._event(job.id, "weights_ready", f"Model files {files_hash[:23]}...")
        await self._prepare_weights(job.id, deployment.id, model, parameters, files_hash)
        started = await self._start_replicas(job.id, deployment, model, parameters)
        await self._switch_traffic(job.id, deployment, model, parameters, started)
        await asyncio.to_thread(records.finish_job, self.database, job.id)
        logger.info("deployment %s (%s) is live", deployment.id, deployment.name)

    async def _prepare_weights(self, job_id: int | None, deployment_id: int, model: Model,
                               parameters: DeploymentParameters, files_hash: str | None = None) -> None:
        """Convert the weights for the engine when it needs that (cached), and remember where they are."""
        optimization = parameters.optimization
        loop = asyncio.get_running_loop()

        def progress(message: str) -> None:
            if job_id is not None:
                asyncio.run_coroutine_threadsafe(self._event(job_id, "preparing_weights", message), loop).result()

        base_path = await asyncio.to_thread(records.adapter_base_path, self.database, model)
        weights = await asyncio.to_thread(prepare_weights, model.source_path, model.format, optimization.engine,
                                          optimization.quantization, self.weights_dir, progress,
                                          parameters.hardware.device, base_path, files_hash)
        self._weights[deployment_id] = str(weights)

    async def _start_replicas(self, job_id: int, deployment: Deployment, model: Model,
                              parameters: DeploymentParameters) -> list[ReplicaTarget]:
        count = parameters.scaling.min_replicas
        started = self._starting.setdefault(deployment.id, [])
        for index in range(count):
            await self._event(job_id, "starting_replica", f"Starting replica {index + 1} of {count}")
            spec = self._replica_spec(deployment, model, parameters, index)
            started.append(await self._start_one(deployment.id, spec))
            await self._event(job_id, "health_check_passed",
                              f"Replica {index + 1} of {count} passed its health check "
                              f"(pid {started[-1].replica.pid})")
        return started

    async def _start_one(self, deployment_id: int, spec: ReplicaSpec) -> ReplicaTarget:
        replica_ids: list[int] = []

        async def record_spawn(pid: int) -> None:
            replica_ids.append(await asyncio.to_thread(
                records.add_replica, self.database, deployment_id, spec.replica_index, pid, str(spec.log_path)))

        try:
            replica = await self.backend.start(spec, on_spawn=record_spawn)
        except BaseException:
            for replica_id in replica_ids:
                await asyncio.shield(asyncio.to_thread(records.set_replica_state, self.database, replica_id,
                                                       "failed"))
            raise
        await asyncio.to_thread(records.set_replica_state, self.database, replica_ids[0], "ready", replica.port)
        return ReplicaTarget(replica=replica, replica_id=replica_ids[0], index=spec.replica_index)

    def _replica_spec(self, deployment: Deployment, model: Model, parameters: DeploymentParameters,
                      index: int) -> ReplicaSpec:
        log_name = f"deployment-{deployment.id}-replica-{index}.log"
        return ReplicaSpec(
            deployment_id=deployment.id, replica_index=index,
            model_path=self._weights.get(deployment.id, model.source_path),
            model_format=model.format, served_model=model.slug,
            engine=parameters.optimization.engine, device=parameters.hardware.device,
            threads=parameters.hardware.threads,
            generation_defaults=parameters.generation.model_dump(mode="json"),
            log_path=self.logs_dir / log_name, max_batch_size=parameters.scaling.max_batch_size,
            quantization=parameters.optimization.quantization,
        )

    async def _switch_traffic(self, job_id: int, deployment: Deployment, model: Model,
                              parameters: DeploymentParameters, started: list[ReplicaTarget]) -> None:
        await self._event(job_id, "switching_traffic", f"Routing {model.slug} to {deployment.name}")
        previous_id = await asyncio.to_thread(records.make_live, self.database, deployment.id, self.outbox)
        self._starting.pop(deployment.id, None)
        self._serve(model, deployment, parameters, started)
        if previous_id is not None and previous_id != deployment.id:
            previous = self._serving.get(previous_id)
            previous_name = previous.deployment.name if previous is not None else f"deployment {previous_id}"
            await self._event(job_id, "draining_previous",
                              f"Draining the previous version {previous_name} and un-deploying it")
            await self._retire(previous_id, f"superseded by {deployment.name}")

    async def _fail_deploy(self, job_id: int, deployment: Deployment, reason: str) -> None:
        logger.warning("deployment %s (%s) failed: %s", deployment.id, deployment.name, reason)
        # Shielded: a second cancel (a shutdown during a cancel) must not leave half a record.
        await asyncio.shield(self._record_failure(job_id, deployment, reason))

    async def _record_failure(self, job_id: int, deployment: Deployment, reason: str) -> None:
        for target in self._starting.pop(deployment.id, []):
            await self._stop_target(target)
        await asyncio.to_thread(records.mark_deploy_failed, self.database, deployment.id, reason, job_id,
                                self.outbox)
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
        deployment = await asyncio.to_thread(records.get_deployment, self.database, deployment_id)
        await asyncio.to_thread(audit.record, self.database, SYSTEM_ACTOR, "deployment.undeploy", deployment.name,
                                "success", None, reason)
        logger.info("deployment %s un-deployed by the system: %s", deployment_id, reason)

    async def _take_down(self, deployment_id: int) -> None:
        """Stop routing to a deployment, let its requests finish, stop its replicas."""
        await asyncio.to_thread(records.clear_live, self.database, deployment_id)
        serving = self._serving.pop(deployment_id, None)
        if serving is not None:
            self.routing.remove(serving.route.slug, deployment_id)
            await self._drain(serving.route)
            for target in list(serving.route.targets):
                await self._stop_target(target)
        self._weights.pop(deployment_id, None)
        await asyncio.to_thread(records.mark_undeployed, self.database, deployment_id, self.outbox)

    async def _drain(self, route: Route) -> None:
        deadline = time.monotonic() + self.policy.drain_timeout
        while route.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if route.in_flight():
            logger.warning("%s still had %d requests in flight after %.0f s; stopping it anyway",
                           route.deployment_name, route.in_flight(), self.policy.drain_timeout)

    async def _stop_target(self, target: ReplicaTarget) -> None:
        await self.backend.stop(target.replica)
        await asyncio.to_thread(records.set_replica_state, self.database, target.replica_id, "stopped")

    # Supervision -------------------------------------------------------------------------

    def start_supervision(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="supervisor")

    def check_replicas_soon(self) -> None:
        """Run the next supervision round now, for instance because a replica refused a connection."""
        self._check_soon.set()

    async def _supervise(self) -> None:
        logger.info("replica supervision started (every %.1f s)", self.policy.interval)
        while True:
            try:
                await asyncio.wait_for(self._check_soon.wait(), timeout=self.policy.interval)
            except asyncio.TimeoutError:
                pass
            self._check_soon.clear()
            for serving in list(self._serving.values()):
                if serving.repairing:
                    continue
                try:
                    await self._check(serving)
                except Exception:  # noqa: BLE001 - one deployment's trouble must not stop supervision
                    logger.exception("supervising %s failed", serving.deployment.name)

    async def _check(self, serving: Serving) -> None:
        idle_after = serving.parameters.scaling.idle_undeploy_after
        now = time.monotonic()
        if idle_after is not None:
            idle_for = now - serving.route.last_request_at
            if idle_for >= idle_after:
                self._spawn_background(self._retire(
                    serving.deployment.id, f"idle: no request for {_seconds(idle_after)}"))
                serving.repairing = True
                return
            lead = min(self.policy.idle_warning_lead, idle_after / 2)
            if idle_for >= idle_after - lead and serving.warned_for != serving.route.last_request_at:
                serving.warned_for = serving.route.last_request_at
                await self._warn_idle(serving, idle_after - idle_for)
        for target in list(serving.route.targets):
            if await self._is_dead(serving, target):
                serving.repairing = True
                self._spawn_background(self._replace_crashed(serving, target))
                return
        change = serving.load.decide(now, serving.route.in_flight(), len(serving.route.targets),
                                     serving.parameters.scaling)
        if change:
            serving.repairing = True
            self._spawn_background(self._scale(serving, change))

    async def _is_dead(self, serving: Serving, target: ReplicaTarget) -> bool:
        if self.backend.has_exited(target.replica):
            return True
        if await self.backend.is_healthy(target.replica):
            serving.failed_checks.pop(target.replica_id, None)
            return False
        failures = serving.failed_checks.get(target.replica_id, 0) + 1
        serving.failed_checks[target.replica_id] = failures
        return failures >= self.policy.health_failures

    async def _replace_crashed(self, serving: Serving, target: ReplicaTarget) -> None:
        name = serving.deployment.name
        last_words = f"{exit_description(target.replica)}; {self.backend.last_words(target.replica)}"
        crashes = serving.crashes.record(time.monotonic())
        logger.error("replica %s (pid %s) of %s died, crash %d within %.0f s: %s", target.index,
                     target.replica.pid, name, crashes, self.policy.crash_window, last_words)
        if target in serving.route.targets:
            serving.route.targets.remove(target)
        await self.backend.stop(target.replica)
        await asyncio.to_thread(records.set_replica_state, self.database, target.replica_id, "failed")
        if serving.crashes.exhausted():
            reason = (f"crashed: replicas died {crashes} times within {_seconds(self.policy.crash_window)}; "
                      f"last error: {last_words}")
            await self._retire(serving.deployment.id, reason)
            return
        delay = serving.crashes.backoff()
        logger.info("restarting replica %s of %s in %.1f s", target.index, name, delay)
        await asyncio.sleep(delay)
        try:
            replacement = await self._start_one(serving.deployment.id, self._replica_spec(
                serving.deployment, serving.model, serving.parameters, target.index))
        except TunedockError as exc:
            logger.error("restart of replica %s of %s failed: %s", target.index, name, exc.message)
            serving.crashes.record(time.monotonic())
            if serving.crashes.exhausted() or not serving.route.targets:
                await self._retire(serving.deployment.id,
                                   f"crashed: {last_words}; then the restart failed: {exc.message}")
                return
        else:
            serving.route.targets.append(replacement)
            logger.info("replica %s of %s restarted as pid %s", target.index, name, replacement.replica.pid)
        serving.repairing = False

    async def _scale(self, serving: Serving, change: int) -> None:
        route = serving.route
        try:
            if change > 0:
                index = max((target.index for target in route.targets), default=-1) + 1
                logger.info("scaling %s up to %d replicas (%d requests in flight)", route.deployment_name,
                            len(route.targets) + 1, route.in_flight())
                route.targets.append(await self._start_one(serving.deployment.id, self._replica_spec(
                    serving.deployment, serving.model, serving.parameters, index)))
            else:
                target = max(route.targets, key=lambda candidate: candidate.index)
                logger.info("scaling %s down to %d replicas", route.deployment_name, len(route.targets) - 1)
                route.targets.remove(target)
                deadline = time.monotonic() + self.policy.drain_timeout
                while target.outstanding and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await self._stop_target(target)
        except TunedockError as exc:
            logger.error("scaling %s failed: %s", route.deployment_name, exc.message)
        finally:
            serving.repairing = False

    async def _warn_idle(self, serving: Serving, seconds_left: float) -> None:
        logger.info("%s is idle; un-deploy in %.0f s unless a request arrives", serving.deployment.name,
                    seconds_left)
        if self.outbox is not None:
            minutes_left = max(1, round(seconds_left / 60))
            await asyncio.to_thread(records.queue_idle_warning, self.database, serving.deployment.id,
                                    minutes_left, self.outbox)

    def keep_alive(self, deployment_id: int) -> bool:
        """Reset a live deployment's idle clock; return False if it is not live here."""
        serving = self._serving.get(deployment_id)
        if serving is None:
            return False
        serving.route.touch()
        logger.info("idle clock of %s reset by a keep-alive", serving.deployment.name)
        return True

    def _spawn_background(self, work: Any) -> None:
        task = asyncio.create_task(_logged(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def serving(self, deployment_id: int) -> Serving | None:
        return self._serving.get(deployment_id)

    # Start-up and shut-down --------------------------------------------------------------

    async def restore(self) -> None:
        """Fail jobs a previous server process left unfinished and bring live deployments back."""
        # Taken first: every row here belongs to the previous server process, none to a deploy
        # that this process starts while the restore runs.
        left_running = await asyncio.to_thread(records.active_replicas, self.database)
        for job in await asyncio.to_thread(records.interrupted_jobs, self.database):
            await self._settle_interrupted(job)
        for model, deployment in await asyncio.to_thread(records.live_deployments, self.database):
            try:
                await self._restore_live(model, deployment, left_running)
            except TunedockError as exc:
                logger.error("live deployment %s (%s) could not be restored: %s", deployment.id,
                             deployment.name, exc.message)
        await self._stop_orphans(left_running)
        self.start_supervision()

    async def _settle_interrupted(self, job: Job) -> None:
        deployment = await asyncio.to_thread(records.get_deployment, self.database, job.deployment_id)
        logger.warning("job %s (%s of %s) was interrupted by a restart", job.id, job.action, deployment.name)
        if job.action == "deploy":
            await asyncio.to_thread(records.mark_deploy_failed, self.database, deployment.id, INTERRUPTED_REASON,
                                    job.id, self.outbox)
            await asyncio.to_thread(records.finish_job, self.database, job.id, INTERRUPTED_REASON)
            return
        await asyncio.to_thread(records.clear_live, self.database, deployment.id)
        await asyncio.to_thread(records.mark_undeployed, self.database, deployment.id)
        await asyncio.to_thread(records.finish_job, self.database, job.id)

    async def _restore_live(self, model: Model, deployment: Deployment, left_running: list[Replica]) -> None:
        adopted: list[ReplicaTarget] = []
        parameters = DeploymentParameters.model_validate(deployment.parameters)
        for row in left_running:
            if row.deployment_id != deployment.id:
                continue
            replica = None
            if row.status == "ready" and row.pid is not None and row.port is not None:
                replica = await self.backend.adopt(row.pid, row.port, Path(row.log_path))
            if replica is None:
                continue  # _stop_orphans stops it and closes its row
            logger.info("adopted replica pid %s of deployment %s", replica.pid, deployment.name)
            adopted.append(ReplicaTarget(replica=replica, replica_id=row.id, index=row.index))
        self._starting[deployment.id] = adopted
        if len(adopted) < parameters.scaling.min_replicas:
            await self._prepare_weights(None, deployment.id, model, parameters)
        taken = {target.index for target in adopted}
        free_indexes = (index for index in range(10_000) if index not in taken)
        while len(adopted) < parameters.scaling.min_replicas:
            spec = self._replica_spec(deployment, model, parameters, next(free_indexes))
            adopted.append(await self._start_one(deployment.id, spec))
        self._starting.pop(deployment.id, None)
        self._serve(model, deployment, parameters, adopted)
        logger.info("live deployment %s serves %s again", deployment.name, model.slug)

    async def _stop_orphans(self, left_running: list[Replica]) -> None:
        """Stop processes of the previous server process that no live deployment adopted."""
        in_use = {target.replica_id for serving in self._serving.values() for target in serving.route.targets}
        for row in left_running:
            if row.id in in_use:
                continue
            if row.pid is not None:
                logger.warning("stopping orphan replica pid %s of deployment %s", row.pid, row.deployment_id)
                replica = RunningReplica(pid=row.pid, port=row.port or 0, log_path=Path(row.log_path))
                await self.backend.stop(replica)
            await asyncio.to_thread(records.set_replica_state, self.database, row.id, "stopped")

    async def shutdown(self) -> None:
        """Cancel running jobs, let in-flight requests finish and stop every replica.

        Live deployments stay live in the store, so the next start serves them again.
        """
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for task in [*self._tasks.values(), *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._background, return_exceptions=True)
        for serving in list(self._serving.values()):
            await self._drain(serving.route)
        for serving in list(self._serving.values()):
            for target in serving.route.targets:
                await self._stop_target(target)
        self._serving.clear()
        await self.backend.close()
        logger.info("deployment manager stopped")

    # Helpers -----------------------------------------------------------------------------

    def _serve(self, model: Model, deployment: Deployment, parameters: DeploymentParameters,
               targets: list[ReplicaTarget]) -> None:
        route = Route(model_id=model.id, slug=model.slug, deployment_id=deployment.id,
                      deployment_name=deployment.name, created=int(model.created_at.timestamp()),
                      targets=list(targets))
        self._serving[deployment.id] = Serving(route=route, parameters=parameters, model=model,
                                               deployment=deployment, crashes=CrashRecord(self.policy))
        self.routing.set(route)

    async def _event(self, job_id: int, stage: str, message: str) -> None:
        await asyncio.to_thread(records.add_event, self.database, job_id, stage, message)


async def _logged(work: Any) -> None:
    """Run supervision work, logging any failure instead of leaving it in an unread task."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - one failed repair must not go unnoticed or stop others
        logger.exception("supervision work %s failed", getattr(work, "__qualname__", work))


def exit_description(replica: RunningReplica) -> str:
    """Say how a replica's process ended: its exit status or the signal that killed it."""
    code = getattr(replica.process, "returncode", None)
    if code is None:
        return "the replica stopped answering its health checks"
    if code < 0:
        try:
            return f"the replica was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the replica was killed by signal {-code}"
    return f"the replica exited with status {code}"


def engine_version(engine: str) -> str | None:
    """Return the installed version of an engine's library, recorded with each deployment."""
    try:
        return metadata.version(ENGINE_PACKAGES[engine])
    except (KeyError, metadata.PackageNotFoundError):
        return None


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _check_undeployable(deployment: Deployment) -> None:
    if deployment.status == "deploying":
        raise Conflict(f"Deployment {deployment.name} is still deploying; cancel its job or wait for it to "
                       "finish, then un-deploy it.", code="deployment_in_progress")
    if deployment.status == "failed":
        raise Conflict(f"Deployment {deployment.name} failed and runs nothing; there is nothing to "
                       "un-deploy.", code="deployment_failed")
    if deployment.undeploy_started_at is not None:
        raise Conflict(f"Deployment {deployment.name} is already un-deployed (by {deployment.undeployed_by}).",
                       code="already_undeployed")

"""The service layer that the management API, the gateway and the console share."""

from __future__ import annotations

from dataclasses import dataclass

from tunedock.accounts.service import AccountService
from tunedock.accounts.sign_in_limits import SignInLimiter
from tunedock.catalog.registration import ModelRegistry
from tunedock.deployments.manager import DeploymentManager
from tunedock.deployments.routing import RoutingTable
from tunedock.deployments.supervision import SupervisionPolicy
from tunedock.deployments.usage import InferenceMetrics
from tunedock.notifier.outbox import Outbox, OutboxConfig
from tunedock.notifier.transport import mail_transport_from_settings
from tunedock.notifier.worker import OutboxWorker
from tunedock.replicas.local import LocalProcessBackend
from tunedock.replicas.token import load_or_create_replica_token
from tunedock.settings import Settings
from tunedock.store.database import Database, PoolSettings


@dataclass
class Services:
    settings: Settings
    database: Database
    accounts: AccountService
    registry: ModelRegistry
    deployments: DeploymentManager
    routing: RoutingTable
    replica_token: str
    notifications: OutboxWorker
    metrics: InferenceMetrics


def build_services(settings: Settings) -> Services:
    database = Database(settings.resolved_database_url, PoolSettings(
        size=settings.database_pool_size, max_overflow=settings.database_max_overflow,
        timeout=settings.database_pool_timeout))
    routing = RoutingTable()
    replica_token = load_or_create_replica_token(settings.home_dir)
    backend = LocalProcessBackend(python=settings.replica_python, start_timeout=settings.replica_start_timeout,
                                  token=replica_token)
    outbox = Outbox(OutboxConfig(api_url=settings.base_url, console_url=settings.console_base_url,
                                 message_id_domain=settings.notify_message_id_domain,
                                 server_recipients=tuple(settings.notify_recipients)))
    return Services(
        settings=settings,
        database=database,
        accounts=AccountService(database, SignInLimiter(settings.sign_in_attempts, settings.sign_in_window)),
        registry=ModelRegistry(database, settings.allowed_model_roots),
        deployments=DeploymentManager(database, backend, routing, settings.replica_logs_dir,
                                      supervision_policy(settings), outbox, settings.home_dir / "weights"),
        routing=routing,
        replica_token=replica_token,
        notifications=OutboxWorker(database, settings, mail_transport_from_settings(settings),
                                   settings.notify_poll_interval),
        metrics=InferenceMetrics(),
    )


def supervision_policy(settings: Settings) -> SupervisionPolicy:
    return SupervisionPolicy(interval=settings.supervise_interval, crash_limit=settings.crash_limit,
                             crash_window=settings.crash_window, drain_timeout=settings.drain_timeout,
                             idle_warning_lead=settings.idle_warning_lead,
                             min_idle_undeploy_after=settings.min_idle_undeploy_after)

"""Account operations: the first admin, sign-in, API keys and request authentication."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tunedock.accounts import audit
from tunedock.accounts import secrets as secret_tools
from tunedock.accounts.audit import Actor
from tunedock.accounts.identity import ROLES, SCOPES, Principal
from tunedock.accounts.sign_in_limits import SignInLimiter
from tunedock.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound, PermissionDenied
from tunedock.store.database import Database
from tunedock.store.tables import ApiKey, User, utc_now

logger = logging.getLogger(__name__)

# Skip the write of last_used_at when the stored value is this recent, so that every
# inference request does not become a database write.
LAST_USED_RESOLUTION = timedelta(seconds=60)
PERSONAL_TOKEN_LIFETIME = timedelta(days=30)
REMEMBER_SECONDS = 5.0


@dataclass(frozen=True)
class FirstAdmin:
    """Credentials created at first start; the secrets are shown once and never stored."""

    username: str
    password: str | None
    api_key: str | None


@dataclass(frozen=True)
class IssuedKey:
    id: int
    name: str
    prefix: str
    scopes: list[str]
    secret: str


@dataclass(frozen=True)
class _Remembered:
    principal: Principal
    valid_until: float  # time.monotonic()
    expires_at: datetime | None


class AccountService:
    def __init__(self, database: Database, sign_in_limits: SignInLimiter | None = None) -> None:
        self.database = database
        self.sign_in_limits = sign_in_limits or SignInLimiter(attempts=5, window=300.0)
        # Recently checked secrets, so that the inference gateway need not query the store on
        # every request. Every change to a key or user in this process empties it; the short
        # lifetime bounds what another server process sharing the database could change.
        self._remembered: dict[str, _Remembered] = {}

    def remembered_principal(self, bearer: str) -> Principal | None:
        """Return the principal of a secret checked within the last few seconds, without the store."""
        entry = self._remembered.get(secret_tools.hash_key(bearer))
        if entry is None or time.monotonic() >= entry.valid_until:
            return None
        if entry.expires_at is not None and entry.expires_at <= utc_now():
            return None
        return entry.principal

    def forget_credentials(self) -> None:
        self._remembered.clear()

    def ensure_first_admin(self, username: str, email: str, password: str | None,
                           api_key: str | None) -> FirstAdmin | None:
        """Create the first admin and its first API key when no user exists yet."""
        with self.database.session() as session:
            if session.scalars(select(User.id).limit(1)).first() is not None:
                return None
        chosen_password = password or secret_tools.generate_password()
        _check_password(chosen_password)
        if api_key is not None and len(api_key) < secret_tools.MIN_KEY_LENGTH:
            raise InvalidInput(
                f"TUNEDOCK_ADMIN_API_KEY is {len(api_key)} characters long; use at least "
                f"{secret_tools.MIN_KEY_LENGTH} random characters."
            )
        with self.database.session() as session:
            admin = User(username=username, email=email, display_name="Administrator", role="admin",
                         password_hash=secret_tools.hash_password(chosen_password))
            session.add(admin)
            session.flush()
            key = api_key or secret_tools.generate_key(secret_tools.API_KEY_MARK)
            session.add(_key_row(admin.id, "api_key", "first admin key", key, list(SCOPES), None, None))
        logger.info("created first admin user %s with one API key", username)
        return FirstAdmin(username=username, password=None if password else chosen_password,
                          api_key=None if api_key else key)

    def sign_in(self, username: str, password: str, address: str | None, channel: str = "api") -> str:
        """Sign in through the rate limits, write the audit event, and return a personal token.

        ``channel`` names where the sign-in came from (``api`` or ``console``) in the audit trail.
        """
        target = username if channel == "api" else f"{username} ({channel})"
        self.sign_in_limits.check(username, address)
        try:
            token = self.login(username, password)
        except AuthenticationFailed as exc:
            self.sign_in_limits.failed(username, address)
            audit.record(self.database, Actor(name=username[:64]), "auth.sign_in", target, "denied", 401,
                         exc.message, address)
            raise
        user = self.get_user(username)
        audit.record(self.database, Actor(name=user.username, user_id=user.id), "auth.sign_in", target, "success",
                     200, None, address)
        return token

    def login(self, username: str, password: str) -> str:
        """Check a username and password and return a new personal access token."""
        with self.database.session() as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None or user.disabled or not secret_tools.verify_password(user.password_hash, password):
                logger.info("sign-in failed for username %r", username)
                raise AuthenticationFailed("Invalid username or password.", code="invalid_credentials")
            token = secret_tools.generate_key(secret_tools.PERSONAL_TOKEN_MARK)
            session.add(_key_row(user.id, "personal_token", "sign-in", token, list(SCOPES), None,
                                 utc_now() + PERSONAL_TOKEN_LIFETIME))
            user.last_login_at = utc_now()
        logger.info("user %s signed in", username)
        return token

    def create_api_key(self, principal: Principal, name: str, scopes: list[str],
                       models: list[str] | None, expires_at: datetime | None) -> IssuedKey:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise InvalidInput(f"Invalid scopes {scopes!r}; choose one or more of {list(SCOPES)}.",
                               param="scopes")
        secret = secret_tools.generate_key(secret_tools.API_KEY_MARK)
        with self.database.session() as session:
            row = _key_row(principal.user_id, "api_key", name, secret, scopes, models, expires_at)
            session.add(row)
            session.flush()
            issued = IssuedKey(id=row.id, name=name, prefix=row.prefix, scopes=scopes, secret=secret)
        logger.info("user %s created API key %s", principal.username, issued.prefix)
        return issued

    def authenticate(self, bearer: str) -> Principal:
        """Resolve a bearer secret to its principal, or raise AuthenticationFailed."""
        prefix = secret_tools.key_prefix(bearer)
        with self.database.session() as session:
            key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
            if key is None or not secret_tools.key_matches(key.secret_hash, bearer):
                raise AuthenticationFailed("Invalid API key or token; check the Authorization header.",
                                           code="invalid_api_key")
            now = utc_now()
            if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
                raise AuthenticationFailed(f"The API key {prefix}... is revoked or expired; create a new one.",
                                           code="invalid_api_key")
            user = session.get(User, key.user_id)
            if user is None or user.disabled:
                raise AuthenticationFailed(f"The user of API key {prefix}... is disabled.",
                                           code="user_disabled")
            if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
                key.last_used_at = now
            principal = Principal(user_id=user.id, username=user.username, role=user.role,
                                  key_prefix=prefix, scopes=tuple(key.scopes),
                                  models=tuple(key.models) if key.models is not None else None)
            self._remembered[key.secret_hash] = _Remembered(principal, time.monotonic() + REMEMBER_SECONDS,
                                                            key.expires_at)
            return principal

    def create_api_key_for(self, principal: Principal, username: str, name: str, scopes: list[str],
                           models: list[str] | None, expires_at: datetime | None) -> IssuedKey:
        """Create a key that belongs to another user (admins only, checked by the caller)."""
        owner = self.get_user(username)
        acting = Principal(user_id=owner.id, username=owner.username, role=owner.role,
                           key_prefix=principal.key_prefix, scopes=principal.scopes, models=None)
        return self.create_api_key(acting, name, scopes, models, expires_at)

    def list_keys(self, principal: Principal, all_users: bool) -> list[tuple[ApiKey, str]]:
        """Return API keys (not sign-in tokens) with their owners: the caller's, or everyone's."""
        with self.database.session() as session:
            query = (select(ApiKey, User.username).join(User, User.id == ApiKey.user_id)
                     .where(ApiKey.kind == "api_key").order_by(ApiKey.id))
            if not all_users:
                query = query.where(ApiKey.user_id == principal.user_id)
            return [(key, owner) for key, owner in session.execute(query).all()]

    def revoke_key(self, principal: Principal, key_id: int) -> ApiKey:
        """Revoke a key at once; the caller must own it or be an admin."""
        with self.database.session() as session:
            key = session.get(ApiKey, key_id)
            if key is None or key.kind != "api_key":
                raise NotFound(f"API key {key_id} not found; `tunedock keys list` shows your keys.",
                               code="key_not_found")
            if key.user_id != principal.user_id and principal.role != "admin":
                raise PermissionDenied(f"API key {key_id} belongs to another user; only its owner or an admin "
                                       "may revoke it.", code="not_key_owner")
            if key.revoked_at is None:
                key.revoked_at = utc_now()
        self.forget_credentials()
        logger.info("user %s revoked API key %s", principal.username, key.prefix)
        return key

    def sign_out(self, principal: Principal) -> None:
        """Revoke the personal access token the principal signed in with; API keys are untouched."""
        with self.database.session() as session:
            token = session.scalars(select(ApiKey).where(ApiKey.prefix == principal.key_prefix,
                                                         ApiKey.kind == "personal_token")).first()
            if token is None or token.revoked_at is not None:
                return
            token.revoked_at = utc_now()
        self.forget_credentials()
        logger.info("user %s signed out; token %s revoked", principal.username, principal.key_prefix)

    def get_user(self, username: str) -> User:
        with self.database.session() as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFound(f"User {username!r} not found; `tunedock users list` shows the users.",
                               code="user_not_found")
            return user

    def get_user_by_id(self, user_id: int) -> User:
        with self.database.session() as session:
            return session.get_one(User, user_id)

    def list_users(self) -> list[User]:
        with self.database.session() as session:
            return list(session.scalars(select(User).order_by(User.id)))

    def update_user(self, principal: Principal, username: str, role: str | None = None,
                    disabled: bool | None = None) -> User:
        """Change a user's role or disabled flag, keeping at least one active admin."""
        if role is not None and role not in ROLES:
            raise InvalidInput(f"Invalid role {role!r}; choose one of {list(ROLES)}.", param="role")
        with self.database.session() as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFound(f"User {username!r} not found; `tunedock users list` shows the users.",
                               code="user_not_found")
            if user.id == principal.user_id and role is not None and role != user.role and principal.role != "admin":
                raise PermissionDenied("You cannot change your own role; ask an admin.", code="own_role")
            loses_admin = user.role == "admin" and not user.disabled and (
                (role is not None and role != "admin") or disabled is True)
            if loses_admin and _active_admins(session) <= 1:
                raise Conflict(f"{username!r} is the last active admin; make another user admin first.",
                               code="last_admin")
            if role is not None:
                user.role = role
            if disabled is not None:
                user.disabled = disabled
        self.forget_credentials()
        logger.info("user %s updated %s: role=%s disabled=%s", principal.username, username, role, disabled)
        return user

    def reset_password(self, username: str, password: str | None) -> str | None:
        """Set a new password (generated when not given, then returned) and end the user's sign-ins."""
        chosen = password or secret_tools.generate_password()
        _check_password(chosen)
        with self.database.session() as session:
            user = session.scalars(select(User).where(User.username == username)).first()
            if user is None:
                raise NotFound(f"User {username!r} not found; `tunedock users list` shows the users.",
                               code="user_not_found")
            user.password_hash = secret_tools.hash_password(chosen)
            for token in session.scalars(select(ApiKey).where(ApiKey.user_id == user.id,
                                                              ApiKey.kind == "personal_token",
                                                              ApiKey.revoked_at.is_(None))):
                token.revoked_at = utc_now()
        self.forget_credentials()
        logger.info("password of user %s reset", username)
        return None if password else chosen

    def create_user(self, username: str, email: str, password: str, role: str) -> int:
        if role not in ROLES:
            raise InvalidInput(f"Invalid role {role!r}; choose one of {list(ROLES)}.", param="role")
        _check_password(password)
        with self.database.session() as session:
            if session.scalars(select(User.id).where(User.username == username)).first() is not None:
                raise Conflict(f"A user named {username!r} already exists; choose another username.")
            user = User(username=username, email=email, display_name=username, role=role,
                        password_hash=secret_tools.hash_password(password))
            session.add(user)
            session.flush()
            user_id = user.id
        logger.info("created user %s with role %s", username, role)
        return user_id


def _active_admins(session: Session) -> int:
    query = select(func.count()).select_from(User).where(User.role == "admin", User.disabled.is_(False))
    return int(session.scalar(query) or 0)


def _check_password(password: str) -> None:
    if len(password) < secret_tools.MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"The password is {len(password)} characters long; use at least "
                           f"{secret_tools.MIN_PASSWORD_LENGTH}.", param="password")


def _key_row(user_id: int, kind: str, name: str, secret: str, scopes: list[str],
             models: list[str] | None, expires_at: datetime | None) -> ApiKey:
    return ApiKey(user_id=user_id, kind=kind, name=name, prefix=secret_tools.key_prefix(secret),
                  secret_hash=secret_tools.hash_key(secret), scopes=scopes, models=models,
                  expires_at=expires_at)

"""The model registry: versions by sha256 and folder, which one is active, and an optional canary.

A partial unique index (migration 0003) allows one `active` and one `canary` row at most, so two concurrent
`activate` calls cannot both win: the second fails with an IntegrityError and can be repeated.

Workers read `roles()` at each batch (one small query), so `activate` reaches every worker at its next batch
without a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.orm import sessionmaker

from db.schema import CanaryResult, ModelRecord

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """A registry request that cannot be done (unknown version, a sha256 that changed...)."""


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    sha256: str
    folder: str
    role: str
    canary_fraction: float = 0.0


@dataclass(frozen=True)
class ModelRoles:
    active: RegisteredModel | None
    canary: RegisteredModel | None


@dataclass(frozen=True)
class CanaryRecord:
    image_sha256: str
    event_id: str
    active_version: str
    canary_version: str
    active_verdict: str | None
    canary_verdict: str | None
    active_probability: float | None
    canary_probability: float | None


class ModelRegistry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def register(self, version: str, sha256: str, folder: str, by: str = "cli") -> RegisteredModel:
        """Register a version (idempotent for the same sha256; a different sha256 under a known version is refused)."""
        with self.sessions.begin() as session:
            row = session.get(ModelRecord, version)
            if row is not None:
                if row.sha256 != sha256:
                    raise RegistryError(f"version {version} is registered with sha256 {row.sha256[:12]}, "
                                        f"not {sha256[:12]}: give the new weights a new version")
                if by != "worker":  # a worker's own path may exist only in its container: an admin's stands
                    row.folder = folder
            else:
                row = ModelRecord(version=version, sha256=sha256, folder=folder, role="registered",
                                  canary_fraction=0.0, registered_at=datetime.now(UTC), registered_by=by)
                session.add(row)
            session.flush()
            return _model(row)

    def list(self) -> list[RegisteredModel]:
        with self.sessions() as session:
            rows = session.scalars(select(ModelRecord).order_by(ModelRecord.registered_at)).all()
            return [_model(r) for r in rows]

    def roles(self) -> ModelRoles:
        with self.sessions() as session:
            rows = session.scalars(select(ModelRecord).where(ModelRecord.role.in_(("active", "canary")))).all()
            by_role = {r.role: _model(r) for r in rows}
            return ModelRoles(by_role.get("active"), by_role.get("canary"))

    def activate(self, version: str) -> RegisteredModel:
        """Make `version` the one that scores new work; the previous active one goes back to `registered`."""
        with self.sessions.begin() as session:
            row = session.get(ModelRecord, version, with_for_update=True)
            if row is None:
                raise RegistryError(f"unknown model version {version!r}: register it first (deepscreen model register)")
            session.execute(update(ModelRecord).where(ModelRecord.role == "active", ModelRecord.version != version)
                            .values(role="registered"))
            row.role, row.canary_fraction, row.activated_at = "active", 0.0, datetime.now(UTC)
            session.flush()
            log.info("model activated version=%s sha256=%s", version, row.sha256[:12])
            return _model(row)

    def set_canary(self, version: str | None, fraction: float = 0.0) -> RegisteredModel | None:
        """Score `fraction` of traffic with `version` too (None: no canary)."""
        if version is not None and not 0.0 < fraction <= 1.0:
            raise RegistryError("the canary fraction must be in (0, 1]")
        with self.sessions.begin() as session:
            session.execute(update(ModelRecord).where(ModelRecord.role == "canary")
                            .values(role="registered", canary_fraction=0.0))
            if version is None:
                return None
            row = session.get(ModelRecord, version, with_for_update=True)
            if row is None:
                raise RegistryError(f"unknown model version {version!r}: register it first")
            if row.role == "active":
                raise RegistryError(f"{version} is the active model; a canary must be another version")
            row.role, row.canary_fraction = "canary", fraction
            session.flush()
            return _model(row)

    # -- canary results ----------------------------------------------------------------------------------
    def record_canary(self, records: list[CanaryRecord]) -> None:
        if not records:
            return
        from sqlalchemy.dialects import postgresql, sqlite

        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        rows = [{**r.__dict__, "agree": r.active_verdict == r.canary_verdict, "at": datetime.now(UTC)} for r in records]
        with self.sessions.begin() as session:
            session.execute(insert(CanaryResult).values(rows).on_conflict_do_nothing(
                index_elements=["image_sha256", "active_version", "canary_version"]))

    def canary_report(self, canary_version: str | None = None) -> list[dict[str, Any]]:
        """Per (active, canary) pair: images scored by both, disagreements and their rate."""
        with self.sessions() as session:
            stmt = select(CanaryResult.active_version, CanaryResult.canary_version, func.count(),
                          func.sum(case((CanaryResult.agree.is_(False), 1), else_=0))).group_by(
                CanaryResult.active_version, CanaryResult.canary_version)
            if canary_version:
                stmt = stmt.where(CanaryResult.canary_version == canary_version)
            out = []
            for active, canary, total, disagree in session.execute(stmt):
                disagree = int(disagree or 0)
                out.append({"active_version": active, "canary_version": canary, "scored_by_both": int(total),
                            "disagreements": disagree, "disagreement_rate": disagree / total if total else None})
            return out


def _model(row: ModelRecord) -> RegisteredModel:
    return RegisteredModel(row.version, row.sha256, row.folder, row.role, row.canary_fraction)

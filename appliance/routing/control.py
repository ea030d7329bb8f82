"""Operator control of routing: overrides kept durable and audited, read fast by selection."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

from appliance.audit.events import AuditEvent
from appliance.audit.ports import AuditStore
from appliance.errors import BackendNotFound, InvalidRequest, ModelNotFound, OverrideNotFound
from appliance.routing.overrides import ActiveOverrides, Override, OverrideKind
from appliance.routing.ports import OverrideStore
from appliance.routing.registry import Registry


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """One backend as the admin API shows it (satisfies the BackendView Protocol)."""

    id: str
    models: tuple[str, ...]
    weight: float
    effective_weight: float
    health: str
    inflight: int
    max_concurrency: int
    ewma_latency_ms: float | None
    ejections: int
    override: Override | None


class OverrideBook:
    """The overrides in memory, with the active set cached until the next change or expiry."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._all: dict[str, Override] = {}
        self._active = ActiveOverrides((), 0.0)
        self._valid_until = -math.inf

    def replace_all(self, overrides: list[Override]) -> None:
        self._all = {o.id: o for o in overrides}
        self._valid_until = -math.inf

    def put(self, override: Override) -> None:
        self._all[override.id] = override
        self._valid_until = -math.inf

    def remove(self, override_id: str) -> Override | None:
        self._valid_until = -math.inf
        return self._all.pop(override_id, None)

    def active(self) -> ActiveOverrides:
        now = self._wall()
        if now >= self._valid_until:
            self._active = ActiveOverrides(self._all.values(), now)
            expiries = [o.expires_at for o in self._active.items if o.expires_at is not None]
            self._valid_until = min(expiries, default=math.inf)
        return self._active


class Control:
    """Implements RoutingControl: every change is stored, applied, then audited."""

    def __init__(
        self,
        *,
        registry: Registry,
        book: OverrideBook,
        store: OverrideStore,
        audit: AuditStore,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._registry = registry
        self._book = book
        self._store = store
        self._audit = audit
        self._wall = wall
        self._monotonic = monotonic

    async def load(self) -> None:
        """Bring stored overrides into memory (at start, and after an external change)."""
        await self._store.purge_expired(self._wall())
        self._book.replace_all(await self._store.list())

    def overrides(self) -> list[Override]:
        return list(self._book.active().items)

    def backends(self) -> list[BackendStatus]:
        active = self._book.active()
        now = self._monotonic()
        by_backend = {
            o.backend: o for o in active.items if o.kind is not OverrideKind.PIN
        }  # later ones win, as in selection
        return [
            BackendStatus(
                id=s.id,
                models=s.models,
                weight=s.weight,
                effective_weight=s.weight * active.factor(s.id),
                health=s.health(now).value,
                inflight=s.inflight,
                max_concurrency=s.max_concurrency,
                ewma_latency_ms=None if s.ewma_s is None else round(s.ewma_s * 1000, 3),
                ejections=s.ejections,
                override=by_backend.get(s.id),
            )
            for s in self._registry.backends.values()
        ]

    def models(self) -> list[str]:
        """The models of the live config."""
        return list(self._registry.model_backends)

    def unroutable_models(self) -> list[str]:
        """Models with no backend that is healthy (or not yet probed) and not drained."""
        active = self._book.active()
        now = self._monotonic()
        backends = self._registry.backends
        return [
            model
            for model, ids in self._registry.model_backends.items()
            if not any(backends[b].routable(now) and active.factor(b) > 0 for b in ids)
        ]

    async def degrade(
        self, backend_id: str, factor: float, reason: str, actor: str, ttl_s: float | None
    ) -> Override:
        if not 0 < factor < 1:
            raise InvalidRequest("'weight' must be between 0 and 1 (exclusive).", param="weight")
        return await self._add(
            OverrideKind.DEGRADE,
            backend_id=backend_id,
            model=None,
            factor=factor,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )

    async def drain(
        self, backend_id: str, reason: str, actor: str, ttl_s: float | None
    ) -> Override:
        return await self._add(
            OverrideKind.DRAIN,
            backend_id=backend_id,
            model=None,
            factor=0.0,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )

    async def pin(
        self, model: str, backend_id: str, reason: str, actor: str, ttl_s: float | None
    ) -> Override:
        if model not in self._registry.model_backends:
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return await self._add(
            OverrideKind.PIN,
            backend_id=backend_id,
            model=model,
            factor=1.0,
            reason=reason,
            actor=actor,
            ttl_s=ttl_s,
        )

    async def restore(self, backend_id: str, reason: str, actor: str) -> list[Override]:
        self._check_backend(backend_id)
        removed = [
            o
            for o in self._book.active().items
            if o.backend == backend_id and o.kind is not OverrideKind.PIN
        ]
        for override in removed:
            await self._remove(override, reason, actor, kind="backend.restore")
        return removed

    async def clear(self, override_id: str, reason: str, actor: str) -> Override:
        found = next((o for o in self._book.active().items if o.id == override_id), None)
        if found is None:
            raise OverrideNotFound(f"No override in force has id '{override_id}'.")
        await self._remove(found, reason, actor, kind="override.clear")
        return found

    async def _add(
        self,
        kind: OverrideKind,
        *,
        backend_id: str,
        model: str | None,
        factor: float,
        reason: str,
        actor: str,
        ttl_s: float | None,
    ) -> Override:
        self._check_backend(backend_id)
        if ttl_s is not None and ttl_s <= 0:
            raise InvalidRequest("'ttl_s' must be positive.", param="ttl_s")
        now = self._wall()
        override = Override(
            id=f"ovr-{uuid.uuid4().hex[:12]}",
            kind=kind,
            backend=backend_id,
            model=model,
            factor=factor,
            reason=reason,
            actor=actor,
            created_at=now,
            expires_at=None if ttl_s is None else now + ttl_s,
        )
        before = self._state_of(backend_id, model)
        await self._store.put(override)
        self._book.put(override)
        await self._audit.append(
            AuditEvent(
                kind=f"backend.{kind.value}" if kind is not OverrideKind.PIN else "override.pin",
                time=now,
                actor=actor,
                subject=backend_id if model is None else f"{model}->{backend_id}",
                reason=reason,
                before=before,
                after=_jsonable(override),
            )
        )
        return override

    async def _remove(self, override: Override, reason: str, actor: str, kind: str) -> None:
        await self._store.delete(override.id)
        self._book.remove(override.id)
        await self._audit.append(
            AuditEvent(
                kind=kind,
                time=self._wall(),
                actor=actor,
                subject=override.id,
                reason=reason,
                before=_jsonable(override),
                after=None,
            )
        )

    def _check_backend(self, backend_id: str) -> None:
        if backend_id not in self._registry.backends:
            raise BackendNotFound(f"No backend has id '{backend_id}'.")

    def _state_of(self, backend_id: str, model: str | None) -> object:
        active = self._book.active()
        if model is not None:
            return {"model": model, "pinned": active.pinned(model)}
        return {"backend": backend_id, "factor": active.factor(backend_id)}


def _jsonable(override: Override) -> dict[str, object]:
    data = asdict(override)
    data["kind"] = override.kind.value
    return data

"""What the edge knows about a finished request, as the facts of its usage record."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from appliance.http.context import RequestContext
from appliance.usage.record import Bill, RequestFacts, bill

_BYTES_PER_TOKEN = 4  # JSON answers without usage: a rough count from the body size


def facts_from(context: RequestContext) -> RequestFacts:
    if context.stream:
        completion_estimate = context.events_relayed  # one token per content event, usually
    else:
        completion_estimate = min(
            context.estimate_completion, context.response_bytes // _BYTES_PER_TOKEN
        )
    return RequestFacts(
        id=context.record_id,
        request_id=context.request_id,
        started_at=context.started_at,
        first_byte_at=context.first_byte_at,
        ended_at=time.time(),
        org=context.org,
        key_id=context.key_id,
        model=context.model,
        backend=context.backend,
        upstream_model=context.upstream_model,
        decision=context.decision,
        attempts=context.attempts,
        status=context.status,
        error_code=None if context.outcome == "ok" else context.outcome,
        stream=context.stream,
        prompt_tokens=context.prompt_tokens,
        completion_tokens=context.completion_tokens,
        estimate_prompt_tokens=context.estimate_prompt,
        estimate_completion_tokens=completion_estimate,
        client_disconnected=context.client_disconnected,
        events_relayed=context.events_relayed,
    )


def usage_hook(
    record: Callable[[RequestFacts, Bill], Awaitable[None]],
) -> Callable[[RequestContext], Awaitable[None]]:
    """The edge's hook, called once per inference request as it ends: settle its limits with
    the bill, then commit its usage record (a span of its own when traced)."""

    async def hook(context: RequestContext) -> None:
        facts = facts_from(context)
        charged = bill(facts)  # one bill for the limits and the record
        if context.settle is not None:
            # Before the write: a record that cannot be written must not keep tokens reserved.
            settle, context.settle = context.settle, None
            settle(charged)
        trace = context.trace
        if trace is not None:
            trace.step("usage.record")
        await record(facts, charged)
        if trace is not None:
            trace.step_done()

    return hook

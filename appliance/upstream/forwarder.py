"""Forward one inference request to the backend a decision names, and relay the answer."""

from __future__ import annotations

from appliance.routing.selection import Target
from appliance.upstream.client import BackendClient
from appliance.upstream.payload import InferenceRequest, render_upstream
from appliance.upstream.relay import Relayed, UsageCallback, relay_stream, relay_whole


class Forwarder:
    def __init__(self, client: BackendClient) -> None:
        self._client = client

    async def forward(
        self, request: InferenceRequest, target: Target, request_id: str, on_done: UsageCallback
    ) -> Relayed:
        body = render_upstream(request, target.upstream_model)
        upstream = await self._client.post(
            target.backend_id, request.endpoint.value, body, request_id
        )
        if request.stream and upstream.status == 200 and upstream.is_event_stream:
            return relay_stream(upstream, on_done)
        return await relay_whole(upstream, on_done)

"""A three-member etcd cluster loses its leader: a router keeps following the config."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.configsvc.etcd_client import EtcdClient, EtcdError
from tests.integration.router_harness import running_router
from tests.integration.test_config_service import (
    documents,
    eventually,
    routed,
    service,
    status_of,
    weight,
)
from tests.services import EtcdServer, etcd_binary, free_port


class EtcdMember(EtcdServer):
    """One member of a static three-member cluster (ports chosen before any starts)."""

    def __init__(self, workdir: Path, name: str) -> None:
        super().__init__(etcd_binary(), workdir)
        self.member = name
        self.port, self.peer_port = free_port(), free_port()
        self.cluster = ""
        self.token = ""  # the same for every member of one cluster

    def _command(self) -> list[str]:
        client, peer = self.url, f"http://{self.host}:{self.peer_port}"
        return [
            str(self.binary), "--name", self.member, "--data-dir", str(self.data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--unsafe-no-fsync",
        ]  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EtcdMember]]:
    members = [EtcdMember(tmp_path / f"etcd{i}", f"m{i}") for i in range(3)]
    initial = ",".join(f"{m.member}=http://{m.host}:{m.peer_port}" for m in members)
    token = f"t-{uuid.uuid4().hex[:8]}"
    for member in members:
        member.cluster, member.token = initial, token
    errors: list[BaseException] = []

    def start(member: EtcdMember) -> None:
        try:
            member.start()
        except BaseException as exc:  # reported below, after every thread ended
            errors.append(exc)

    # No member answers health before a quorum is up: start them side by side.
    threads = [threading.Thread(target=start, args=(m,)) for m in members]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        if errors:
            raise errors[0]
        yield members
    finally:
        for member in members:
            member.retire()


async def test_leader_loss_is_followed_by_the_watch(
    cluster: list[EtcdMember], capsys: pytest.CaptureFixture[str]
) -> None:
    """The router watches through the leader; kill it: writes go on through the others, the
    router's watch breaks, resumes on another member and applies them."""
    prefix = f"/t-{uuid.uuid4().hex[:8]}/"
    async with EtcdClient([m.url for m in cluster], timeout_s=1.0) as client:
        statuses = [await client.status(m.url) for m in cluster]
        [leader] = [m for m, st in zip(cluster, statuses, strict=True) if st.leader == st.member_id]
        # The leader first: the router's requests and its watch go there while it lives.
        urls = [leader.url] + [m.url for m in cluster if m is not leader]
        endpoints = ", ".join(f'"{u}"' for u in urls)
        extra = service(prefix, leader.url).replace(f'["{leader.url}"]', f"[{endpoints}]")
        async with running_router(2, extra=extra) as router:
            mocks = {n: m.url for n, m in router.mocks.items()}
            await client.txn_put_delete(documents(prefix, mocks, {}))
            await eventually(lambda: routed(router), "routed")
            leader.kill()
            deadline = time.monotonic() + 15
            while True:  # the election takes a moment; the client moves to a live member
                try:
                    await client.txn_put_delete(documents(prefix, mocks, {"m1": 7.0}))
                    break
                except EtcdError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            await eventually(lambda: weight(router, "m1") == 7.0, "applied after the leader died")
            assert await status_of(router) == 200
    assert "config_service_unreachable" in capsys.readouterr().out  # the watch did break

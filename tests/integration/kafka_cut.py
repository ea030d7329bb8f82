"""A Kafka-aware TCP proxy that breaks the link in the middle of a publish, and a Tansu broker
that advertises the proxy, so every client connection (metadata and produce) goes through it.

The proxy reads each Produce request the client sends (API key 0) and counts its records. At
the Nth one it forwards the request, lets the broker write it, swallows the broker's answer
and cuts every connection: that request's records are stored but never acknowledged, which
is exactly "in flight at the moment of the failure".
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path

from tests.integration.tcp_proxy import TcpProxy
from tests.services import KafkaBroker, free_port

_PRODUCE = 0


class ProxiedBroker(KafkaBroker):
    """Tansu advertising `advertised_port` (the proxy's) instead of its own port."""

    def __init__(self, binary: Path, workdir: Path, advertised_port: int) -> None:
        super().__init__(binary, workdir)
        self.advertised_port = advertised_port

    def _command(self) -> list[str]:
        command = super()._command()
        command[command.index("--advertised-listener-url") + 1] = (
            f"tcp://{self.host}:{self.advertised_port}"
        )
        return command


class ProduceCutter(TcpProxy):
    """Relays 127.0.0.1:port to the broker; cut_at the Nth Produce request (see module doc).

    The port is fixed before start, since the broker advertises it; set `target` once the
    broker runs.
    """

    def __init__(self, cut_at: int) -> None:
        super().__init__("127.0.0.1", 0, port=free_port())
        self.cut_at = cut_at
        self.produce_records: list[int] = []  # records in each Produce request seen, in order
        self.was_cut = False
        self._swallow = False

    @property
    def in_flight_at_cut(self) -> int:
        """Records of the request whose answer was swallowed (0 before the cut)."""
        return self.produce_records[self.cut_at - 1] if self.was_cut else 0

    @property
    def acknowledged_before_cut(self) -> int:
        return sum(self.produce_records[: self.cut_at - 1])

    def restore(self) -> None:
        """Let connections through again (no further cut)."""
        super().restore()
        self._swallow = False

    async def _forward(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while not self.cut_off:
                size = await source.readexactly(4)
                frame = await source.readexactly(struct.unpack(">i", size)[0])
                if struct.unpack(">h", frame[:2])[0] == _PRODUCE:
                    self.produce_records.append(records_in_produce(frame))
                    if len(self.produce_records) == self.cut_at and not self.was_cut:
                        self._swallow = True  # forward it; its answer never reaches the client
                sink.write(size + frame)
                await sink.drain()
        sink.close()

    async def _backward(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await source.read(65536):
                if self._swallow:
                    # The broker has answered, so it stored the batch: now break the link.
                    self.was_cut = True
                    self.cut()
                    return
                sink.write(data)
                await sink.drain()
        sink.close()


def records_in_produce(frame: bytes) -> int:
    """The record count of a Produce request (v3-v8: one record batch per partition)."""
    pos = 8  # api_key, api_version, correlation_id
    (client_id,) = struct.unpack_from(">h", frame, pos)
    pos += 2 + max(client_id, 0)
    (transactional_id,) = struct.unpack_from(">h", frame, pos)
    pos += 2 + max(transactional_id, 0) + 2 + 4  # acks, timeout
    count = 0
    (topics,) = struct.unpack_from(">i", frame, pos)
    pos += 4
    for _ in range(topics):
        (name,) = struct.unpack_from(">h", frame, pos)
        pos += 2 + name
        (partitions,) = struct.unpack_from(">i", frame, pos)
        pos += 4
        for _ in range(partitions):
            (size,) = struct.unpack_from(">i", frame, pos + 4)  # after the partition index
            pos += 8
            end = pos + size
            while pos < end:  # record batches: records count at byte 57 of each
                (length,) = struct.unpack_from(">i", frame, pos + 8)
                count += struct.unpack_from(">i", frame, pos + 57)[0]
                pos += 12 + length
    return count

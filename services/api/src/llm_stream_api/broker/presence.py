"""Telling the workers which sessions this replica serves, and which it wants replayed.

Workers route a session's live frames to the replicas that announced it (see
docs/adr/0002-scale-out-return-path.md). Wants (sessions a client asks for here) are batched
for ``WANT_FLUSH_S`` and sent at once; every ``PRESENCE_INTERVAL_S`` the sessions served and
tracked here are announced again, which repeats whatever an announcement lost. After a
reconnect, frames sent while the connection was down are lost: every open session is wanted
again, once the live queue is bound again.
"""

from __future__ import annotations

import asyncio

import structlog
from mqcommon.schemas import Presence

from llm_stream_api.broker.connection import BrokerConnection
from llm_stream_api.sessions.hub import SessionHub

log = structlog.get_logger(__name__)

WANT_FLUSH_S = 0.005
RECONNECT_REPLAY_DELAY_S = 1.0


class PresenceAnnouncer:
    def __init__(self, broker: BrokerConnection, hub: SessionHub, replica_id: str) -> None:
        self._broker = broker
        self._hub = hub
        self.replica_id = replica_id
        self._wants: set[str] = set()
        self._want_timer: asyncio.TimerHandle | None = None
        broker.when_reconnected(self._reconnected)

    def want(self, session_id: str) -> None:
        """Ask the workers to replay ``session_id`` and route it here from now on."""
        self._wants.add(session_id)
        if self._want_timer is None:
            self._want_timer = asyncio.get_running_loop().call_later(WANT_FLUSH_S, self._send_wants)

    async def announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self._broker.settings.presence_interval_s)
            served, tracked = self._hub.served_sessions(), self._hub.tracked_sessions()
            if served or tracked:
                await self._announce(Presence(self.replica_id, served, tracked, []))

    def _send_wants(self) -> None:
        self._want_timer = None
        wants, self._wants = sorted(self._wants), set()
        if wants:
            self._broker.send_soon(self._announce(Presence(self.replica_id, [], [], wants)))

    def _reconnected(self) -> None:
        asyncio.get_running_loop().call_later(RECONNECT_REPLAY_DELAY_S, self._want_all)

    def _want_all(self) -> None:
        for session_id in self._hub.tracked_sessions():
            self.want(session_id)

    async def _announce(self, presence: Presence) -> None:
        # With no worker bound there is nobody to tell; what is lost is repeated by the next
        # periodic announcement.
        await self._broker.send(
            self._broker.topology.presence_exchange.name, presence.encode(), what="presence announcement"
        )

"""One DATA phase on the adapter side: streamed to Office 365 as it arrives, kept for the spool.

Theory of operation. When the client's DATA starts, the policy already knows where the message
goes (`SmtpPolicy.end_of_data` does not look at the content): a direct session sends DATA upstream
at once and `feed` passes each piece of content on as the client sends it, so a large scan reaches
Office 365 while it is still arriving and the relay holds one chunk of it, not the message. The
header block alone is held back when the From is rewritten (`rewrite.rewrite_from`; at most
`rewrite.HEAD_MAX`, Exchange Online's own header limit). Every piece also goes into the
connection's `Body` (memory, then a temporary file), because the policy may still send the message,
or some of its recipients, to the spool when Office 365 answers.

The end of the client's DATA is the only thing that ends the upstream DATA: a client that goes
away, or whose DATA breaks a limit, gets its upstream session aborted (`abort`), never a `.` -
nothing is delivered in part.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import replies
from ..delivery.message import Body
from ..delivery.smtp import DataStream
from ..errors import RelayError
from . import policy as core
from .rewrite import HEAD_MAX, HEADER_END, rewrite_from

if TYPE_CHECKING:
    from .outbound import Outbound
    from .session import Session


class Transfer:
    def __init__(self, handler: Outbound, state: Session, body: Body) -> None:
        self.handler, self.state, self.body = handler, state, body
        self.effect: core.Reply | core.UpstreamData | core.GraphSend | core.SpoolIt = core.Reply(
            replies.NEED_RCPT)
        self.stream: DataStream | None = None
        self.failed: core.Failed | None = None  # the upstream DATA failed before its end
        self.head: bytearray | None = None  # the header block, held back for the From rewrite
        self.rewrite_to: str | None = None
        self.started = time.monotonic()

    async def begin(self) -> None:
        up = self.state.upstream
        self.effect = self.state.policy.end_of_data(up is not None and up.connected)
        if not isinstance(self.effect, core.UpstreamData):
            return
        assert up is not None
        self.rewrite_to = self.effect.rewrite_to
        self.head = bytearray() if self.rewrite_to else None
        try:
            self.stream = await up.begin_data()
        except RelayError as exc:
            self.failed = self.handler._failed(self.state, exc, "data")

    async def feed(self, content: bytes) -> None:
        self.body.write(content)
        if self.stream is None:
            return
        if self.head is not None:
            self.head += content
            m = HEADER_END.search(self.head)
            if m is None and not self.head.startswith(b"\r\n"):
                if len(self.head) > HEAD_MAX:
                    self._give_up(core.Failed(replies.HEADERS_TOO_BIG))
                return
            if m is not None and m.start() > HEAD_MAX:
                # the blank line came in the same read that took the block over the limit:
                # how the bytes were cut by the network must not decide whether it is refused
                self._give_up(core.Failed(replies.HEADERS_TOO_BIG))
                return
            cut = m.end() if m else len(self.head)
            head, self.head = bytes(self.head), None
            assert self.rewrite_to is not None
            content = rewrite_from(head[:cut], self.rewrite_to) + head[cut:]
        await self._write(content)

    async def _write(self, data: bytes) -> None:
        assert self.stream is not None
        try:
            await self.stream.write(data)
        except RelayError as exc:
            self.stream = None
            self.failed = self.handler._failed(self.state, exc, "data", size=self.body.size)

    def _give_up(self, failed: core.Failed) -> None:
        if self.stream is not None:
            self.stream.abort()
        self.stream, self.failed = None, failed

    def abort(self) -> None:
        """The client's DATA did not end well (or at all): the upstream never sees its end."""
        self._give_up(self.failed or core.Failed(replies.CONNECTION_LOST_DATA, lost=True))

    async def finish(self) -> str:
        """The client's DATA ended: the upstream's verdict, then the spool if the policy says so."""
        effect = self.effect
        if isinstance(effect, core.UpstreamData):
            effect = self.state.policy.data_done(await self._finish_upstream())
        elif isinstance(effect, core.GraphSend):  # the account sends through Microsoft Graph
            effect = self.state.policy.data_done(
                await self.handler._graph_send(self.state, effect, self.body))
        while not isinstance(effect, core.Reply):
            assert isinstance(effect, core.SpoolIt), effect
            effect = self.state.policy.spool_done(
                await self.handler._spool(self.state, effect, self.body))
        return effect.text

    async def _finish_upstream(self) -> core.Accepted | core.Failed:
        if self.head is not None and self.stream is not None:  # the message was all headers
            assert self.rewrite_to is not None
            head, self.head = bytes(self.head), None
            await self._write(rewrite_from(head, self.rewrite_to))
        if self.stream is None:
            return self.failed or core.Failed(replies.CONNECTION_LOST_DATA, lost=True)
        stream, self.stream = self.stream, None
        try:
            reply = await stream.finish()
        except RelayError as exc:
            return self.handler._failed(self.state, exc, "data", size=self.body.size)
        return self.handler._relayed(self.state, reply, self.body.size,
                                     time.monotonic() - self.started)


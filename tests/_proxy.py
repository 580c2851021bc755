"""A faulty TCP proxy the transfer tests share: it cuts or starves one connection."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable


class Faulty:
    """A TCP proxy on 127.0.0.1 whose first connection is cut (both ways, abortively)
    after ``cut_up`` bytes toward the target, or (``drop_answer``) delivers the request
    whole and never the answer.  ``before_cut`` runs once the last byte before the
    cut went out (a test holds the connection there).  ``lose_answer``: the first
    piece of an answer, on any connection, for which it is true is never delivered
    and its connection is cut (``lost`` counts them).  TLS passes through untouched."""

    def __init__(self, target: int, *, cut_up: int | None = None, drop_answer: bool = False,
                 before_cut: Callable[[], Awaitable[None]] | None = None,
                 lose_answer: Callable[[bytes], bool] | None = None) -> None:
        self.target, self.cut_up, self.drop_answer = target, cut_up, drop_answer
        self.before_cut = before_cut
        self.lose_answer = lose_answer
        self.lost = 0
        self.connections = 0
        self.port = 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Faulty:
        self.server = await asyncio.start_server(self.conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        faulty = self.connections == 1
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        budget = [self.cut_up if faulty and self.cut_up is not None else -1]

        def cut() -> None:
            for w in (cw, uw):
                with contextlib.suppress(Exception):
                    w.transport.abort()

        async def up() -> None:
            while data := await cr.read(65536):
                if budget[0] >= 0:
                    if len(data) >= budget[0]:
                        uw.write(data[:budget[0]])
                        with contextlib.suppress(Exception):
                            await uw.drain()
                        if self.before_cut is not None:
                            await self.before_cut()
                        cut()
                        return
                    budget[0] -= len(data)
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            while data := await ur.read(65536):
                lose = (self.lose_answer is not None and not self.lost
                        and self.lose_answer(data))
                if lose or (faulty and self.drop_answer):
                    self.lost += lose
                    cut()
                    return
                cw.write(data)
                await cw.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(up(), down())
        cut()


class Proxy:
    """A TCP proxy on its own event loop thread.  Its first connection is cut after
    ``cut_up`` bytes toward the target; with ``hold`` it stops forwarding at that
    point until :meth:`let_go`, then cuts."""

    def __init__(self, target: int, *, cut_up: int, hold: bool = False) -> None:
        self.holding = threading.Event()
        self.faulty = Faulty(target, cut_up=cut_up, before_cut=self._hold if hold else None)
        self._go = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self.faulty.conn, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            server.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(30)

    @property
    def connections(self) -> int:
        return self.faulty.connections

    async def _hold(self) -> None:
        self.holding.set()
        await asyncio.to_thread(self._go.wait)

    def let_go(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._go.set()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

"""Staying under Teams' and Graph's rate limits inside one process (learn.microsoft.com,
"Rate limiting for bots" and "Microsoft Graph service-specific throttling limits").

``Throttle`` is built once per process and shared by every send of every trigger:

- a per-instance concurrency bound (``MaxConcurrentSends``): at most that many sends in flight;
- the tenant's request budget for Bot Connector calls (``TenantSendRatePerSecond``) and, separately,
  for Graph calls (``TenantGraphRatePerSecond``: the cold path's installed-apps, install and chat
  requests): the whole deployment's budget, shared by all instances through Table Storage
  (shared.storage.budget); without a shared budget (tests, the CLI without storage) a local window per tenant;
- a per-conversation window (Teams: 7 per 1 s, 8 per 2 s, 60 per 30 s, 1800 per hour per bot and
  conversation), so repeated sends to one user are spaced rather than throttled;
- a per-tenant pause: a 429 from either service stops *every* request of that service to that tenant
  in this process for its Retry-After, not just the one request that got it.

A send waiting for its turn (pacing, a pause) gives its concurrency slot back while it sleeps, so other
users and tenants are not held up behind it, and never waits longer than ``max_wait`` (the retry
policy's RetryMaxDelaySeconds) at a time: a longer wait raises ``TransientError`` with that wait as
``retry_after`` (HTTP 503 / a Service Bus redelivery) instead of sleeping past functionTimeout.

A 429 that still happens is honoured through the pause and the retry loop of shared.http.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol

from shared.errors import NotifyError, TransientError

logger = logging.getLogger(__name__)

Service = Literal["connector", "graph"]


class RequestBudget(Protocol):
    """The tenants' shared request budgets (shared.storage.budget.TenantBudget, in the storage layer above)."""

    async def take(self, service: Service, tenant_id: str) -> float:
        """Reserve one request for ``service`` in ``tenant_id``: the seconds to wait before sending it."""
        ...


# Teams' per-bot-per-conversation limits for sends ("Rate limiting for bots": 7/1 s, 8/2 s, 60/30 s, 1800/h).
CONVERSATION_LIMITS: tuple[tuple[int, float], ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
_MAX_TRACKED_CONVERSATIONS = 50_000


class SlidingWindow:
    """At most ``n`` events per ``seconds`` for every (n, seconds) pair; ``acquire`` waits its turn."""

    def __init__(self, limits: tuple[tuple[int, float], ...], clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._longest = max(s for _, s in limits)
        self._hits: collections.deque[float] = collections.deque()

    def wait(self) -> float:
        """Seconds until one more event is allowed (0 when it is allowed now)."""
        now = self._clock()
        while self._hits and self._hits[0] <= now - self._longest:
            self._hits.popleft()
        wait = 0.0
        for count, seconds in self._limits:
            if len(self._hits) >= count:
                wait = max(wait, self._hits[-count] + seconds - now)
        return wait

    def record(self) -> None:
        self._hits.append(self._clock())

    @property
    def idle(self) -> bool:
        return not self._hits or self._hits[-1] <= self._clock() - self._longest


class Throttle:
    def __init__(
        self,
        *,
        max_concurrent: int,
        send_rate: float,
        graph_rate: float,
        max_wait: float = 30.0,
        clock: Callable[[], float] | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self._budget = budget
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._concurrency = asyncio.Semaphore(max_concurrent)
        self._max_wait = max_wait
        # The slot the current task holds (a one-item list: True while held), to give it back while
        # the task sleeps for its turn.
        self._held: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
            f"throttle_slot_{id(self)}", default=None
        )
        self._rates: dict[Service, tuple[tuple[int, float], ...]] = {
            "connector": _rate_window(send_rate),
            "graph": _rate_window(graph_rate),
        }
        self._tenant_windows: dict[tuple[Service, str], SlidingWindow] = {}
        self._conversation_windows: collections.OrderedDict[str, SlidingWindow] = collections.OrderedDict()
        self._paused_until: dict[tuple[Service, str], float] = {}
        self.throttled = 0  # 429s seen by this process (bench and tests read it)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the process's ``MaxConcurrentSends`` send slots, for the duration of one send (given
        back while the send sleeps for its turn, see ``idle``)."""
        held = self._held.get()
        if held is not None and held[0]:
            yield  # already inside a slot of this task (a send within a send): one is enough
            return
        await self._concurrency.acquire()
        state = [True]
        token = self._held.set(state)
        try:
            yield
        finally:
            self._held.reset(token)
            if state[0]:
                self._concurrency.release()

    def detached_context(self) -> contextvars.Context:
        """A copy of the current context for a task that shares work between sends (a single-flight
        resolution): it holds no slot of its own, so its waits must not give back (and then compete
        to take again) the slot of the send that started it, which waits for it."""
        context = contextvars.copy_context()
        context.run(self._held.set, None)
        return context

    async def idle(self, seconds: float) -> None:
        """Sleep without holding the current task's slot (if it holds one), then take a slot again."""
        state = self._held.get()
        if state is None or not state[0]:
            await asyncio.sleep(seconds)
            return
        state[0] = False
        self._concurrency.release()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self._concurrency.acquire()
            state[0] = True

    async def before(self, service: Service, tenant_id: str, conversation_id: str | None = None) -> None:
        """Wait until a request to ``service`` for ``tenant_id`` (and ``conversation_id``) is allowed:
        the tenant's pause, the conversation's window and the tenant's rate, re-checked together after
        every wait. Raises ``TransientError`` when the wait is longer than ``max_wait``."""
        key = (service, tenant_id.lower())
        conversation = self._conversation(conversation_id) if conversation_id is not None else None
        window = self._tenant_windows.get(key)
        if window is None:
            window = self._tenant_windows[key] = SlidingWindow(self._rates[service], self._clock)
        shared = self._budget is not None
        while True:
            # Single-threaded asyncio: checking and recording happen without an await in between.
            pause = self._paused_until.get(key, 0.0) - self._clock()
            local = 0.0 if shared else window.wait()
            wait = max(pause, conversation.wait() if conversation is not None else 0.0, local)
            if wait <= 0:
                break
            self._check_wait(service, wait)
            await self.idle(wait)
        if conversation is not None:
            conversation.record()
        if self._budget is None:
            window.record()
            return
        # The tenant's shared budget: reserve a token (a lease from Table Storage now and then), then
        # wait for its time with the slot given back (idle).
        try:
            wait = await self._budget.take(service, tenant_id)
        except NotifyError as err:
            # Table Storage trouble must not stop Graph and Teams requests: this instance paces the
            # tenant alone meanwhile (a 429 is still honoured), like an app without a shared budget.
            logger.warning("the shared %s budget is unavailable (%s): pacing locally", service, err.code)
            wait = window.wait()
            window.record()
        if wait > 0:
            self._check_wait(service, wait)
            await self.idle(wait)

    def _check_wait(self, service: Service, wait: float) -> None:
        if wait > self._max_wait:
            raise TransientError(
                f"{service} requests for this tenant are paused or paced for {wait:.0f}s; try again later.",
                code="upstream_unavailable",
                target=service,
                retry_after=wait,
            )

    def throttled_for(self, service: Service, tenant_id: str, seconds: float) -> None:
        """A 429 with Retry-After ``seconds``: pause every request of ``service`` to the tenant."""
        self.throttled += 1
        key = (service, tenant_id.lower())
        until = self._clock() + seconds
        if until > self._paused_until.get(key, 0.0):
            self._paused_until[key] = until
            logger.info("%s throttled the tenant: pausing its requests for %.2fs", service, seconds)

    def _conversation(self, conversation_id: str) -> SlidingWindow:
        window = self._conversation_windows.get(conversation_id)
        if window is None:
            window = SlidingWindow(CONVERSATION_LIMITS, self._clock)
            self._conversation_windows[conversation_id] = window
            if len(self._conversation_windows) > _MAX_TRACKED_CONVERSATIONS:
                oldest, candidate = next(iter(self._conversation_windows.items()))
                if candidate.idle:
                    del self._conversation_windows[oldest]
        self._conversation_windows.move_to_end(conversation_id)
        return window


def _rate_window(per_second: float) -> tuple[tuple[int, float], ...]:
    """``per_second`` as a window: a fractional rate (0.5/s) becomes 1 per 2 s."""
    if per_second >= 1:
        return ((int(per_second), 1.0),)
    return ((1, 1.0 / per_second),)


class Gate:
    """What the retry loop of shared.http needs: wait before each attempt, report a 429."""

    def __init__(
        self, throttle: Throttle, service: Service, tenant_id: str, conversation_id: str | None = None
    ) -> None:
        self._throttle = throttle
        self._service: Service = service
        self._tenant = tenant_id
        self._conversation = conversation_id

    async def before(self) -> None:
        await self._throttle.before(self._service, self._tenant, self._conversation)

    def throttled(self, retry_after: float) -> None:
        self._throttle.throttled_for(self._service, self._tenant, retry_after)

    async def sleep(self, seconds: float) -> None:
        """A retry's backoff, without holding a concurrency slot."""
        await self._throttle.idle(seconds)

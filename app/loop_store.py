"""Redis side of the closed loop: impressions, the event log, fleet-wide experiment counts
and each user's fresh interactions (docs/experiment.md, docs/contracts.md section 4).

Every write that must agree with another is one Lua script, so it is atomic: an
impression and its count; an event's append to the stream and the counts it moves, with
the dedup that makes each (request, item) count once however often feedback repeats.

Two clients with their own timeouts and circuit breakers: the fast one serves /recommend,
which must never wait long or fail because of Redis (its calls give up and report None);
the durable one serves /feedback and the readout, whose callers get a 503 instead. The
calls of concurrent requests are group-committed (app/group_commit.py): a burst costs a
few round trips, not one per request.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.cache import CircuitBreaker
from app.experiment import Interval, RunningTest, SequentialLook
from app.group_commit import GroupCommit

logger = logging.getLogger(__name__)

PREFIX = "recsys:"
# The event log; `python -m training events export` reads it (docs/contracts.md section 4).
STREAM_KEY = PREFIX + "events"
CURRENT_EXPERIMENT = PREFIX + "exp:current"
# Counts of an experiment that was replaced stay readable this long.
RETIRED_EXPERIMENT_SECONDS = 30 * 86_400

T = TypeVar("T")
# Connections per client and process (redis-py's own default cap).
MAX_CONNECTIONS = 100
# Calls per round trip at most (app/group_commit.py): a batch is one Lua script, which
# holds Redis for its whole run, so a large one would delay every other client.
GROUP_COMMIT_MAX = 128
# What redis-py's blocking pool raises when no connection came free in time.
POOL_EXHAUSTED = "No connection available."
# How redis-py's read timeouts begin (a connect timeout says "Timeout connecting").
READ_TIMEOUT = "Timeout reading"
# A read timeout that fired after this many times its time fired late: the event loop was
# busy that long, so the timeout says nothing about Redis.
LATE_TIMEOUT_FACTOR = 2.0


class StoreUnavailableError(Exception):
    """Redis failed, timed out, or its circuit is open; `busy` when this process, not Redis,
    was the cause (no free connection in time, or a read timer that fired late)."""

    def __init__(self, reason: str, *, busy: bool = False) -> None:
        super().__init__(reason)
        self.busy = busy


def counts_key(experiment: str) -> str:
    return f"{PREFIX}exp:{experiment}:counts"


def sequential_key(experiment: str) -> str:
    return f"{PREFIX}exp:{experiment}:seq"


def fresh_key(user: str) -> str:
    return f"{PREFIX}fresh:{user}"


def new_experiment_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"exp-{stamp}-{secrets.token_hex(3)}"


# Creates the first experiment when none exists, so that counting can start at once.
_ENSURE_EXPERIMENT = """
local function ensure_experiment(prefix, candidate, now)
  local current = prefix .. 'exp:current'
  local id = redis.call('HGET', current, 'id')
  if not id then
    id = candidate
    redis.call('HSET', current, 'id', id, 'started_at', now)
  end
  return id
end
"""

# ARGV: one json document {prefix, now, ttl, candidate (experiment id),
# rows: [[request id, user, variant, version, items json, ratings json], ...]}: a batch of
# impressions (app/group_commit.py). Answers {experiment, per row 1 recorded, 0 the id
# seen before with this user and these items (a retry keeps its first impression), -1 the
# id names another list: another user's, or this user's with other items}.
IMPRESSION_LUA = (
    _ENSURE_EXPERIMENT
    + """
local a = cjson.decode(ARGV[1])
local exp = ensure_experiment(a.prefix, a.candidate, a.now)
local counts = a.prefix .. 'exp:' .. exp .. ':counts'
local out = {}
for i, r in ipairs(a.rows) do
  local key = a.prefix .. 'imp:' .. r[1]
  local seen = redis.call('HMGET', key, 'user', 'items')
  if seen[1] then
    out[i] = (seen[1] == r[2] and seen[2] == r[5]) and 0 or -1
  else
    redis.call('HSET', key, 'user', r[2], 'variant', r[3], 'version', r[4],
      'items', r[5], 'ratings', r[6], 't', a.now, 'exp', exp)
    redis.call('EXPIRE', key, a.ttl)
    redis.call('SET', a.prefix .. 'imp:user:' .. r[2], r[1], 'EX', a.ttl)
    redis.call('HINCRBY', counts, 'impressions:' .. r[3], 1)
    out[i] = 1
  end
end
return {exp, out}
"""
)

# ARGV: prefix, json [[request id or "", user], ...]. Each answer is the impression the
# event belongs to (the named one, else the user's latest) or null.
RESOLVE_LUA = """
local prefix = ARGV[1]
local queries = cjson.decode(ARGV[2])
local out = {}
for i, q in ipairs(queries) do
  local rid = q[1]
  if rid == '' then
    rid = redis.call('GET', prefix .. 'imp:user:' .. q[2])
  end
  local found = cjson.null
  if rid then
    local h = redis.call('HGETALL', prefix .. 'imp:' .. rid)
    if #h > 0 then
      found = {rid = rid}
      for j = 1, #h, 2 do found[h[j]] = h[j + 1] end
    end
  end
  out[i] = found
end
return cjson.encode(out)
"""

# ARGV: one json document {prefix, stream, maxlen, ttl, fresh_ttl, fresh_max,
# events: [{fields, exp, variant, rid, item, user, event, hit, err, fresh, now_ms}]}: the
# events of a batch of /feedback requests (app/group_commit.py).
# Per event: append to the stream; then, if attributed, count it, and count its hit and
# its rating error only the first time its (request, item) is seen.
WRITE_LUA = """
local a = cjson.decode(ARGV[1])
local out = {}
for i, e in ipairs(a.events) do
  local id = redis.call('XADD', a.stream, 'MAXLEN', '~', a.maxlen, '*', unpack(e.fields))
  local new_hit, new_list, new_err = 0, 0, 0
  if e.exp ~= '' then
    local counts = a.prefix .. 'exp:' .. e.exp .. ':counts'
    redis.call('HINCRBY', counts, 'feedback:' .. e.variant, 1)
    redis.call('HINCRBY', counts, 'event:' .. e.variant .. ':' .. e.event, 1)
    local seen = a.prefix .. 'fb:' .. e.rid
    if e.hit == 1 and redis.call('HSETNX', seen, 'hit:' .. e.item, 1) == 1 then
      new_hit = 1
      redis.call('HINCRBY', counts, 'hits:' .. e.variant, 1)
      if redis.call('HSETNX', seen, 'list', 1) == 1 then
        new_list = 1
        redis.call('HINCRBY', counts, 'hit_lists:' .. e.variant, 1)
      end
    end
    if e.err ~= cjson.null and redis.call('HSETNX', seen, 'rated:' .. e.item, 1) == 1 then
      new_err = 1
      redis.call('HINCRBYFLOAT', counts, 'abs_err_sum:' .. e.variant, e.err)
      redis.call('HINCRBY', counts, 'abs_err_n:' .. e.variant, 1)
    end
    redis.call('EXPIRE', seen, a.ttl)
  end
  if e.fresh == 1 then
    local fresh = a.prefix .. 'fresh:' .. e.user
    redis.call('ZADD', fresh, e.now_ms, e.item)
    redis.call('ZREMRANGEBYRANK', fresh, 0, -(a.fresh_max + 1))
    redis.call('EXPIRE', fresh, a.fresh_ttl)
  end
  out[i] = {id, new_hit, new_list, new_err}
end
return out
"""

# KEYS: the experiment's sequential-test hash. ARGV: p-value, low, high of this look.
# Keeps the smallest p-value and the intersection of the intervals over all looks.
RUNNING_LUA = """
local p, lo, hi = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local looks = 1
local cur = redis.call('HMGET', KEYS[1], 'p', 'lo', 'hi', 'looks')
if cur[1] then
  p = math.min(p, tonumber(cur[1]))
  lo = math.max(lo, tonumber(cur[2]))
  hi = math.min(hi, tonumber(cur[3]))
  looks = tonumber(cur[4]) + 1
end
local fmt = '%.17g'
redis.call('HSET', KEYS[1], 'p', string.format(fmt, p), 'lo', string.format(fmt, lo),
  'hi', string.format(fmt, hi), 'looks', looks)
return {string.format(fmt, p), string.format(fmt, lo), string.format(fmt, hi), looks}
"""

ENSURE_LUA = (
    _ENSURE_EXPERIMENT
    + """
local id = ensure_experiment(ARGV[1], ARGV[2], ARGV[3])
return {id, redis.call('HGET', ARGV[1] .. 'exp:current', 'started_at')}
"""
)

# ARGV: prefix, new id, now, retention of the old experiment's keys.
RESET_LUA = """
local prefix = ARGV[1]
local current = prefix .. 'exp:current'
local old = redis.call('HGET', current, 'id')
redis.call('HSET', current, 'id', ARGV[2], 'started_at', ARGV[3])
if old then
  redis.call('EXPIRE', prefix .. 'exp:' .. old .. ':counts', ARGV[4])
  redis.call('EXPIRE', prefix .. 'exp:' .. old .. ':seq', ARGV[4])
  return old
end
return false
"""


# "new": counted; "repeat": the same user's request id again with the same items (a
# retry), counted once; "taken": the id names another list, another user's or this user's
# with other items (a reused trace id), nothing written.
Recorded = Literal["new", "repeat", "taken"]
_RECORDED: dict[int, Recorded] = {1: "new", 0: "repeat", -1: "taken"}
# request id, user, variant, version, items json, ratings json
_ImpressionRow = tuple[str, str, str, str, str, str]


@dataclass(frozen=True)
class StoredImpression:
    request_id: str
    user: str
    variant: str
    version: str
    items: list[str]
    ratings: list[float]
    experiment: str


@dataclass(frozen=True)
class Written:
    """One event's append: its stream id and whether it was the first hit on its (request,
    item), the first hit on its list, the first rating of its (request, item)."""

    stream_id: str
    new_hit: bool
    new_list_hit: bool
    new_rating: bool


def _stored(entry: dict[str, Any]) -> StoredImpression:
    return StoredImpression(
        request_id=str(entry["rid"]),
        user=str(entry.get("user", "")),
        variant=str(entry.get("variant", "")),
        version=str(entry.get("version", "")),
        items=[str(i) for i in orjson.loads(entry.get("items", "[]"))],
        ratings=[float(r) for r in orjson.loads(entry.get("ratings", "[]"))],
        experiment=str(entry.get("exp", "")),
    )


def _split(flat: list[T], sizes: list[int]) -> list[list[T]]:
    """`flat` cut into consecutive runs of `sizes`."""
    out, start = [], 0
    for size in sizes:
        out.append(flat[start : start + size])
        start += size
    return out


def _client(url: str, timeout: float, connect_timeout: float) -> aioredis.Redis:
    # A blocking pool: in a burst a call waits (up to the connect timeout) for a free
    # connection, where redis-py's default pool refuses every call past 100 connections.
    no_retry = Retry(NoBackoff(), 0)  # redis-py retries by default: a retry multiplies the wait
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=connect_timeout,
        socket_timeout=timeout,
        socket_connect_timeout=max(timeout, connect_timeout),
        retry=no_retry,
        health_check_interval=0,
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=pool, retry=no_retry)


class _Guarded:
    """An async client behind a circuit breaker; failures become StoreUnavailableError.

    Only failures of Redis trip the breaker. No free connection in time, or a read timeout
    that fired late, say this process's event loop was busy (a burst): telling the breaker
    would drop every call for seconds and lose what the burst served."""

    def __init__(self, client: aioredis.Redis, breaker: CircuitBreaker, timeout: float) -> None:
        self.client = client
        self.breaker = breaker
        self.timeout = timeout

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise StoreUnavailableError("circuit open")
        started = time.monotonic()
        try:
            result = await operation()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self._busy(exc, time.monotonic() - started):
                self.breaker.record_inconclusive()
                raise StoreUnavailableError(reason, busy=True) from exc
            self.breaker.record_failure()
            raise StoreUnavailableError(reason) from exc
        self.breaker.record_success()
        return result

    def _busy(self, exc: BaseException, seconds: float) -> bool:
        if isinstance(exc, redis.ConnectionError):
            return isinstance(exc.__cause__, TimeoutError) and str(exc) == POOL_EXHAUSTED
        late = seconds > LATE_TIMEOUT_FACTOR * self.timeout
        return late and isinstance(exc, redis.TimeoutError) and str(exc).startswith(READ_TIMEOUT)


class LoopStore:
    def __init__(
        self,
        url: str,
        *,
        fast_timeout: float,
        durable_timeout: float,
        connect_timeout: float,
        breaker_threshold: int,
        breaker_reset_seconds: float,
        impression_ttl_seconds: int,
    ) -> None:
        def breaker() -> CircuitBreaker:
            return CircuitBreaker(threshold=breaker_threshold, reset_seconds=breaker_reset_seconds)

        self._fast = _Guarded(_client(url, fast_timeout, connect_timeout), breaker(), fast_timeout)
        self._durable = _Guarded(
            _client(url, durable_timeout, connect_timeout), breaker(), durable_timeout
        )
        self.retry_after_seconds = max(1, round(breaker_reset_seconds))
        self.impression_ttl = impression_ttl_seconds
        fast, durable = self._fast.client, self._durable.client
        self._impression = fast.register_script(IMPRESSION_LUA)
        self._impression_retry = durable.register_script(IMPRESSION_LUA)
        self._resolve = durable.register_script(RESOLVE_LUA)
        self._write = durable.register_script(WRITE_LUA)
        self._running = durable.register_script(RUNNING_LUA)
        self._ensure = durable.register_script(ENSURE_LUA)
        self._reset = durable.register_script(RESET_LUA)
        # The calls of concurrent requests, one round trip per batch.
        self._fresh_reads = GroupCommit(self._read_fresh, max_weight=GROUP_COMMIT_MAX)
        self._impression_writes = GroupCommit(self._write_impressions, max_weight=GROUP_COMMIT_MAX)
        # /feedback: weighed by events (one request holds up to FEEDBACK_BATCH_LIMIT).
        self._resolves = GroupCommit(self._resolve_batch, max_weight=GROUP_COMMIT_MAX, weight=len)
        self._writes = GroupCommit(
            self._write_batch, max_weight=GROUP_COMMIT_MAX, weight=lambda d: len(d["events"])
        )
        self._commits = (self._fresh_reads, self._impression_writes, self._resolves, self._writes)

    async def warm(self, connections: int) -> int:
        """Opens up to `connections` connections per client before traffic comes; how many
        the fast client holds. A burst at start would otherwise open them while the event
        loop is busy, where even a connect to a healthy Redis can outlast its timeout and
        trip the breaker. Never raises: a Redis down at start is the breaker's business."""
        opened = []
        for guarded in (self._fast, self._durable):
            pool = guarded.client.connection_pool
            held = []
            try:
                for _ in range(connections):
                    held.append(await pool.get_connection())
            except (redis.RedisError, OSError, TimeoutError) as exc:
                logger.warning("Redis connections not opened at start", extra={"reason": str(exc)})
            finally:
                for connection in held:
                    await pool.release(connection)
            opened.append(len(held))
        return opened[0]

    # -- /recommend path: never raises ---------------------------------------------------

    async def fresh_items(self, user: str) -> list[str] | None:
        """The items the user recently interacted with; None when Redis did not answer."""
        try:
            return await self._fresh_reads(user)
        except StoreUnavailableError as exc:
            logger.debug("fresh state unavailable", extra={"reason": str(exc)})
            return None

    async def _read_fresh(self, users: list[str]) -> list[list[str]]:
        async def read() -> list[list[str]]:
            async with self._fast.client.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.zrange(fresh_key(user), 0, -1)
                answers: list[list[str]] = await pipe.execute()
            return [[str(item) for item in items] for items in answers]

        return await self._fast.call(read)

    async def record_impression(
        self,
        *,
        request_id: str,
        user: str,
        variant: str,
        version: str,
        items: list[str],
        ratings: list[float],
    ) -> tuple[Recorded, str] | None:
        """(what became of it, experiment id); None when Redis did not answer: the list was
        served but will not be counted."""
        row = (
            request_id, user, variant, version,
            orjson.dumps(items).decode(), orjson.dumps(ratings).decode(),
        )  # fmt: skip
        try:
            return await self._impression_writes(row)
        except StoreUnavailableError as exc:
            logger.debug("impression not recorded", extra={"reason": str(exc)})
            return None

    async def _write_impressions(self, rows: list[_ImpressionRow]) -> list[tuple[Recorded, str]]:
        document = {
            "prefix": PREFIX,
            "now": f"{time.time():.3f}",
            "ttl": str(self.impression_ttl),
            "candidate": new_experiment_id(),
            "rows": rows,
        }
        payload = orjson.dumps(document).decode()
        try:
            experiment, recorded = await self._fast.call(lambda: self._impression(args=[payload]))
        except StoreUnavailableError as exc:
            if not exc.busy:
                raise
            # The loop was busy, not Redis: once more, with /feedback's patience, rather than
            # lose the batch. Rows the first try did write answer "repeat", so only
            # Prometheus's impression counter misses them; Redis's counts do not.
            logger.debug("impressions retried", extra={"reason": str(exc), "rows": len(rows)})
            retry = self._impression_retry
            experiment, recorded = await self._durable.call(lambda: retry(args=[payload]))
        return [(_RECORDED[int(r)], str(experiment)) for r in recorded]

    # -- /feedback and the readout: raise StoreUnavailableError ----------------------------

    async def resolve(self, queries: list[tuple[str, str]]) -> list[StoredImpression | None]:
        """For each (request id or "", user): the impression it names, or the user's latest."""
        if not queries:
            return []
        return await self._resolves(queries)

    async def _resolve_batch(
        self, batches: list[list[tuple[str, str]]]
    ) -> list[list[StoredImpression | None]]:
        payload = orjson.dumps([list(q) for queries in batches for q in queries]).decode()
        raw = await self._durable.call(lambda: self._resolve(args=[PREFIX, payload]))
        found = [_stored(entry) if entry else None for entry in orjson.loads(raw)]
        return _split(found, [len(queries) for queries in batches])

    async def write_events(self, document: dict[str, Any]) -> list[Written]:
        """Runs WRITE_LUA on `document` ({maxlen, ttl, fresh_ttl, fresh_max, events}, the
        same limits in every call); what each event added, in order. The events of one call
        are written all or none."""
        return await self._writes(document)

    async def _write_batch(self, documents: list[dict[str, Any]]) -> list[list[Written]]:
        merged = {
            **documents[0],
            "prefix": PREFIX,
            "stream": STREAM_KEY,
            "events": [event for document in documents for event in document["events"]],
        }
        payload = orjson.dumps(merged).decode()
        rows = await self._durable.call(lambda: self._write(args=[payload]))
        written = [
            Written(str(r[0]), bool(int(r[1])), bool(int(r[2])), bool(int(r[3]))) for r in rows
        ]
        return _split(written, [len(document["events"]) for document in documents])

    async def experiment(self) -> tuple[str, float]:
        """The current experiment (id, start time), created when there is none yet."""
        args = [PREFIX, new_experiment_id(), f"{time.time():.3f}"]
        ident, started = await self._durable.call(lambda: self._ensure(args=args))
        return str(ident), float(started)

    async def reset(self) -> tuple[str, str | None]:
        """Starts a new experiment; (new id, previous id)."""
        new = new_experiment_id()
        args: list[str | int] = [PREFIX, new, f"{time.time():.3f}", RETIRED_EXPERIMENT_SECONDS]
        previous = await self._durable.call(lambda: self._reset(args=args))
        return new, (str(previous) if previous else None)

    async def counts(self, experiment: str) -> dict[str, str]:
        client = self._durable.client
        values = await self._durable.call(lambda: client.hgetall(counts_key(experiment)))
        return {str(k): str(v) for k, v in values.items()}

    async def running_test(
        self, experiment: str, look: SequentialLook | None
    ) -> RunningTest | None:
        """Folds this look into the experiment's running test and returns it; without a
        look (not enough data yet) returns what earlier looks left, if anything."""
        key = sequential_key(experiment)
        if look is None:
            client = self._durable.client
            stored = await self._durable.call(lambda: client.hgetall(key))
            if not stored:
                return None
            values = [stored["p"], stored["lo"], stored["hi"], stored["looks"]]
        else:
            args = [repr(look.p_value), repr(look.interval.low), repr(look.interval.high)]
            values = await self._durable.call(lambda: self._running(keys=[key], args=args))
        return RunningTest(
            p_value=float(values[0]),
            interval=Interval(float(values[1]), float(values[2])),
            looks=int(values[3]),
        )

    async def aclose(self) -> None:
        for commit in self._commits:
            await commit.aclose()
        for guarded in (self._fast, self._durable):
            await guarded.client.aclose(close_connection_pool=True)

"""Redis side of the closed loop: impressions, the event log, fleet-wide experiment counts
and each user's fresh interactions (docs/experiment.md, docs/contracts.md section 4).

Every write that must agree with another is one Lua script, so it is atomic: an
impression and its count; an event's append to the stream and the counts it moves, with
the dedup that makes each (request, item) count once however often feedback repeats.

Two clients with their own timeouts and circuit breakers: the fast one serves /recommend,
which must never wait long or fail because of Redis (its calls give up and report None);
the durable one serves /feedback and the readout, whose callers get a 503 instead.
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
# What redis-py's blocking pool raises when no connection came free in time.
POOL_EXHAUSTED = "No connection available."


class StoreUnavailableError(Exception):
    """Redis failed, timed out, or its circuit is open."""


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

# ARGV: prefix, request id, user, variant, version, items json, ratings json, now, ttl,
# candidate experiment id. A request id seen before keeps its first impression.
IMPRESSION_LUA = (
    _ENSURE_EXPERIMENT
    + """
local prefix = ARGV[1]
local exp = ensure_experiment(prefix, ARGV[10], ARGV[8])
local key = prefix .. 'imp:' .. ARGV[2]
local owner = redis.call('HGET', key, 'user')
if owner then
  if owner == ARGV[3] then
    return {0, exp}
  end
  return {-1, exp}
end
redis.call('HSET', key, 'user', ARGV[3], 'variant', ARGV[4], 'version', ARGV[5],
  'items', ARGV[6], 'ratings', ARGV[7], 't', ARGV[8], 'exp', exp)
redis.call('EXPIRE', key, ARGV[9])
redis.call('SET', prefix .. 'imp:user:' .. ARGV[3], ARGV[2], 'EX', ARGV[9])
redis.call('HINCRBY', prefix .. 'exp:' .. exp .. ':counts', 'impressions:' .. ARGV[4], 1)
return {1, exp}
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

# ARGV: one json document {prefix, stream, maxlen, ttl, fresh_ttl, fresh_max, now_ms,
# events: [{fields, exp, variant, rid, item, user, event, hit, err, fresh}]}.
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
    redis.call('ZADD', fresh, a.now_ms, e.item)
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


# "new": counted; "repeat": the same user's request id again (a retry), counted once;
# "taken": the id names another user's list (a reused trace id), nothing written.
Recorded = Literal["new", "repeat", "taken"]
_RECORDED: dict[int, Recorded] = {1: "new", 0: "repeat", -1: "taken"}


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
    """An async client behind a circuit breaker; failures become StoreUnavailableError."""

    def __init__(self, client: aioredis.Redis, breaker: CircuitBreaker) -> None:
        self.client = client
        self.breaker = breaker

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise StoreUnavailableError("circuit open")
        try:
            result = await operation()
        except redis.ConnectionError as exc:
            # No free connection in time: this process is busy, which says nothing about
            # Redis, so the breaker (which would drop every call for seconds) is not told.
            if isinstance(exc.__cause__, TimeoutError) and str(exc) == POOL_EXHAUSTED:
                raise StoreUnavailableError(POOL_EXHAUSTED) from exc
            self.breaker.record_failure()
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self.breaker.record_failure()
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        self.breaker.record_success()
        return result


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

        self._fast = _Guarded(_client(url, fast_timeout, connect_timeout), breaker())
        self._durable = _Guarded(_client(url, durable_timeout, connect_timeout), breaker())
        self.retry_after_seconds = max(1, round(breaker_reset_seconds))
        self.impression_ttl = impression_ttl_seconds
        fast, durable = self._fast.client, self._durable.client
        self._impression = fast.register_script(IMPRESSION_LUA)
        self._resolve = durable.register_script(RESOLVE_LUA)
        self._write = durable.register_script(WRITE_LUA)
        self._running = durable.register_script(RUNNING_LUA)
        self._ensure = durable.register_script(ENSURE_LUA)
        self._reset = durable.register_script(RESET_LUA)

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
            items = await self._fast.call(lambda: self._fast.client.zrange(fresh_key(user), 0, -1))
        except StoreUnavailableError as exc:
            logger.debug("fresh state unavailable", extra={"reason": str(exc)})
            return None
        return [str(item) for item in items]

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
        now = f"{time.time():.3f}"
        args: list[str | int] = [
            PREFIX, request_id, user, variant, version,
            orjson.dumps(items).decode(), orjson.dumps(ratings).decode(),
            now, self.impression_ttl, new_experiment_id(),
        ]  # fmt: skip
        try:
            recorded, experiment = await self._fast.call(lambda: self._impression(args=args))
        except StoreUnavailableError as exc:
            logger.debug("impression not recorded", extra={"reason": str(exc)})
            return None
        return _RECORDED[int(recorded)], str(experiment)

    # -- /feedback and the readout: raise StoreUnavailableError ----------------------------

    async def resolve(self, queries: list[tuple[str, str]]) -> list[StoredImpression | None]:
        """For each (request id or "", user): the impression it names, or the user's latest."""
        if not queries:
            return []
        payload = orjson.dumps([list(q) for q in queries]).decode()
        raw = await self._durable.call(lambda: self._resolve(args=[PREFIX, payload]))
        found: list[StoredImpression | None] = []
        for entry in orjson.loads(raw):
            if not entry:
                found.append(None)
                continue
            found.append(
                StoredImpression(
                    request_id=str(entry["rid"]),
                    user=str(entry.get("user", "")),
                    variant=str(entry.get("variant", "")),
                    version=str(entry.get("version", "")),
                    items=[str(i) for i in orjson.loads(entry.get("items", "[]"))],
                    ratings=[float(r) for r in orjson.loads(entry.get("ratings", "[]"))],
                    experiment=str(entry.get("exp", "")),
                )
            )
        return found

    async def write_events(self, document: dict[str, Any]) -> list[Written]:
        """Runs WRITE_LUA on `document`; what each event added, in order."""
        payload = orjson.dumps({"prefix": PREFIX, "stream": STREAM_KEY, **document}).decode()
        rows = await self._durable.call(lambda: self._write(args=[payload]))
        return [Written(str(r[0]), bool(int(r[1])), bool(int(r[2])), bool(int(r[3]))) for r in rows]

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
        for guarded in (self._fast, self._durable):
            await guarded.client.aclose(close_connection_pool=True)

"""Keeping several workers (and replicas) in step without restarting them.

Two background duties, each optional:

* routing: with Redis or ROUTING_FILE configured, an admin change of the A/B split is
  written there and every worker adopts it within ROUTING_SYNC_SECONDS; without this, a
  PUT /admin/routing would reach only the one worker that happened to receive it, and a
  user would flip between variants depending on the worker answering. The same pass puts
  the newest split back into a flushed Redis (app/routing.py), so workers started after a
  flush agree with the older ones.
* model watch: with MODEL_WATCH_SECONDS > 0, each worker reloads when MODEL_DIR (usually
  the `current` symlink) comes to point at another bundle, so that one `os.replace` of the
  link updates every worker.

The loop runs in a daemon thread: its Redis calls and bundle loads never block requests.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from app.routing import RoutingSync
from app.services import ReloadInProgressError, Services

logger = logging.getLogger(__name__)


class BackgroundSync:
    def __init__(
        self,
        services: Services,
        *,
        routing: RoutingSync | None,
        routing_every: float,
        model_every: float,
    ) -> None:
        self._services = services
        self._routing = routing
        self._routing_every = routing_every
        self._model_every = model_every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # A target that failed to load is not retried until the link moves again.
        self._failed_target: Path | None = None

    @property
    def active(self) -> bool:
        return (self._routing is not None and self._routing_every > 0) or self._model_every > 0

    def start(self) -> None:
        if not self.active:
            return
        self._thread = threading.Thread(target=self._loop, name="app-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        next_routing = next_model = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if self._routing is not None and self._routing_every > 0 and now >= next_routing:
                self._routing.refresh()
                next_routing = now + self._routing_every
            if self._model_every > 0 and now >= next_model:
                self.check_model_dir()
                next_model = now + self._model_every
            self._stop.wait(0.2)

    def check_model_dir(self) -> None:
        """Reload when MODEL_DIR resolves to another bundle than the one serving."""
        current = self._services.holder.current
        try:
            target = Path(self._services.settings.model_dir).resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            return  # mid-switch or gone: keep serving what we have
        if current is None or target in (current.bundle.directory, self._failed_target):
            return
        try:
            self._services.load()
        except ReloadInProgressError:
            return
        except Exception as exc:
            self._failed_target = target
            logger.error(
                "automatic reload failed, still serving the old bundle",
                extra={"target": str(target), "reason": str(exc)},
            )
            return
        self._failed_target = None

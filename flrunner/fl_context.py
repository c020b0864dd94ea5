"""FLContext: the property bag passed to every component call, as in NVIDIA FLARE.

A prop is set with two flags. ``private`` props stay in this process (they are never sent to a
peer); ``sticky`` props are written back to the context manager, so every context created after
that by `FLContextManager.new_context` starts with them. A prop keeps the flags it was first set
with: setting it again with other flags is refused (returns False), as NVFlare does.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class FLContextKey:
    """Reserved prop keys."""

    ENGINE = "__engine__"
    JOB_ID = "__job_id__"
    IDENTITY_NAME = "__identity_name__"
    RUN_ABORT_SIGNAL = "__run_abort_signal__"
    WORKSPACE_OBJECT = "__workspace_object__"
    EVENT_ORIGIN = "__event_origin__"
    EVENT_DATA = "__event_data__"


class _Prop:
    __slots__ = ("value", "private", "sticky")

    def __init__(self, value: Any, private: bool, sticky: bool) -> None:
        self.value = value
        self.private = private
        self.sticky = sticky


class FLContext:
    """Props shared between the components of one job for one call chain."""

    def __init__(self, manager: FLContextManager | None = None) -> None:
        self._props: dict[str, _Prop] = {}
        self._manager = manager

    def set_prop(self, key: str, value: Any, private: bool = True, sticky: bool = True) -> bool:
        """Set a prop. Returns False (and changes nothing) if ``key`` exists with other flags."""
        existing = self._props.get(key)
        if existing is not None and (existing.private != private or existing.sticky != sticky):
            log.error("prop '%s' was set with private=%s sticky=%s; refusing to change its flags",
                      key, existing.private, existing.sticky)
            return False
        self._props[key] = _Prop(value, private, sticky)
        if sticky and self._manager is not None:
            self._manager._set_sticky(key, value, private)
        return True

    def get_prop(self, key: str, default: Any = None) -> Any:
        prop = self._props.get(key)
        return default if prop is None else prop.value

    def get_prop_detail(self, key: str) -> dict | None:
        prop = self._props.get(key)
        if prop is None:
            return None
        return {"value": prop.value, "private": prop.private, "sticky": prop.sticky}

    def remove_prop(self, key: str) -> None:
        self._props.pop(key, None)

    def get_all_public_props(self) -> dict[str, Any]:
        return {k: p.value for k, p in self._props.items() if not p.private}

    def get_engine(self) -> Any:
        return self.get_prop(FLContextKey.ENGINE)

    def get_job_id(self) -> str | None:
        return self.get_prop(FLContextKey.JOB_ID)

    def get_identity_name(self, default: str = "") -> str:
        return self.get_prop(FLContextKey.IDENTITY_NAME, default)

    def get_run_abort_signal(self) -> Any:
        return self.get_prop(FLContextKey.RUN_ABORT_SIGNAL)

    # A context is used as ``with engine.new_context() as fl_ctx:`` in NVFlare code.
    def __enter__(self) -> FLContext:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FLContextManager:
    """Creates contexts that start with the engine, identity, job id and every sticky prop."""

    def __init__(self, engine: Any, identity_name: str, job_id: str, public_stickers: dict | None = None,
                 private_stickers: dict | None = None) -> None:
        self._lock = threading.Lock()
        self._stickers: dict[str, tuple[Any, bool]] = {}
        for k, v in (public_stickers or {}).items():
            self._stickers[k] = (v, False)
        for k, v in (private_stickers or {}).items():
            self._stickers[k] = (v, True)
        self._engine = engine
        self._identity = identity_name
        self._job_id = job_id

    def _set_sticky(self, key: str, value: Any, private: bool) -> None:
        with self._lock:
            self._stickers[key] = (value, private)

    def new_context(self) -> FLContext:
        ctx = FLContext(self)
        with self._lock:
            stickers = dict(self._stickers)
        for k, (v, private) in stickers.items():
            ctx._props[k] = _Prop(v, private, True)
        ctx._props[FLContextKey.ENGINE] = _Prop(self._engine, True, False)
        ctx._props[FLContextKey.IDENTITY_NAME] = _Prop(self._identity, False, False)
        ctx._props[FLContextKey.JOB_ID] = _Prop(self._job_id, False, False)
        return ctx

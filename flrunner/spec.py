"""The engine API: `EngineSpec` and `ServerEngineSpec`, as NVIDIA FLARE defines them.

Method names, argument names, defaults and return shapes follow NVFlare's
``nvflare.apis.server_engine_spec`` so that code written against it ports unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Tuple

from flrunner.client import Client
from flrunner.component import Widget
from flrunner.fl_context import FLContext
from flrunner.job import Job
from flrunner.shareable import Shareable
from flrunner.snapshot import RunSnapshot
from flrunner.workspace import Workspace


class EngineSpec(ABC):
    """What every engine offers its components."""

    @abstractmethod
    def fire_event(self, event_type: str, fl_ctx: FLContext):
        """Fire ``event_type`` to every component of the job."""

    @abstractmethod
    def get_component(self, component_id: str) -> object:
        """The component (or workflow) with this id, or None."""

    @abstractmethod
    def get_workspace(self) -> Workspace:
        """The workspace of the process."""

    @abstractmethod
    def new_context(self) -> FLContext:
        """A fresh FLContext carrying the engine, the job id, the identity and sticky props."""

    @abstractmethod
    def get_widget(self, widget_id: str) -> Widget:
        """The widget with the specified ID, or None if not found."""

    @abstractmethod
    def register_aux_message_handler(self, topic: str, message_handle_func):
        """Register ``message_handle_func(topic, request, fl_ctx) -> Shareable`` for ``topic``.

        Raises:
            ValueError: a handler is already registered for the topic, or the topic is not a
                non-empty string.
            TypeError: ``message_handle_func`` is not callable.
        """

    @abstractmethod
    def send_aux_request(self, targets: list, topic: str, request: Shareable, timeout: float, fl_ctx: FLContext,
                         optional=False, secure=False) -> dict:
        """Send ``request`` to ``targets`` (None or [] means all) and return {site name: reply}."""

    def fire_and_forget_aux_request(self, targets: list, topic: str, request: Shareable, fl_ctx: FLContext,
                                    optional=False, secure=False) -> dict:
        """Send without waiting for replies (a `send_aux_request` with timeout 0)."""
        return self.send_aux_request(targets, topic, request, 0.0, fl_ctx, optional, secure)


class ServerEngineSpec(EngineSpec, ABC):
    """The server-side engine of one job."""

    @abstractmethod
    def get_clients(self) -> List[Client]:
        """The participating clients, as last synced from the parent."""

    @abstractmethod
    def sync_clients_from_main_process(self):
        """Fetch the participating clients from the parent process; returns them."""

    @abstractmethod
    def update_job_run_status(self):
        """Push this job's run status to the parent; return once the parent made it durable."""

    @abstractmethod
    def get_client_name_from_token(self, token: str) -> str:
        """The client name for a login token, or None if no client has it."""

    @abstractmethod
    def check_client_resources(self, job: Job, resource_reqs: Dict[str, dict], fl_ctx: FLContext
                               ) -> Dict[str, Tuple[bool, Optional[str]]]:
        """Ask each site whether ``resource_reqs`` fit; {client name: (is_resource_enough, token)}."""

    @abstractmethod
    def cancel_client_resources(self, resource_check_results: Dict[str, Tuple[bool, str]],
                                resource_reqs: Dict[str, dict], fl_ctx: FLContext):
        """Release reservations made by `check_client_resources`."""

    @abstractmethod
    def start_client_job(self, job_id, client_sites, fl_ctx: FLContext):
        """Send the start-job command to ``client_sites``."""

    @abstractmethod
    def persist_components(self, fl_ctx: FLContext, completed: bool):
        """Snapshot the state of every component that has ``get_persist_state``."""

    @abstractmethod
    def restore_components(self, snapshot: RunSnapshot, fl_ctx: FLContext):
        """Give every component that has ``restore`` its state from ``snapshot``."""

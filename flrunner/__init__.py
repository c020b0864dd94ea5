"""flrunner: the server-side job runtime for federated learning.

The public API shared by the parent, job processes, sites and embedding programs:
the engine spec (`ServerEngineSpec`), the types its methods use, the embedding handle
(`FLRunner`) and the admin client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flrunner.client import Client
from flrunner.component import Controller, FLComponent, Widget
from flrunner.errors import (
    BadRequest,
    Conflict,
    EndpointError,
    FlrunnerError,
    JobFolderError,
    JobStoreError,
    NotFound,
    ParentUnavailable,
    RequestTimeout,
    Unauthorized,
    WorkspaceError,
)
from flrunner.events import EventType
from flrunner.fl_context import FLContext, FLContextKey, FLContextManager
from flrunner.fl_signal import Signal
from flrunner.job import Job, load_job_folder
from flrunner.shareable import ReturnCode, Shareable, make_reply
from flrunner.snapshot import RunSnapshot
from flrunner.spec import EngineSpec, ServerEngineSpec
from flrunner.status import RunStatus
from flrunner.util.lazy import lazy_attributes
from flrunner.workspace import Workspace

if TYPE_CHECKING:
    from flrunner.admin.client import AdminClient, StatusFeed
    from flrunner.admin.embed import FLRunner, follow_job, follow_jobs

__version__ = "0.1.0"

#: Loaded on first use: a job process (and its start-up time and memory) never needs the admin
#: client, the embedding API or psutil.
_LAZY = {"AdminClient": "admin.client", "StatusFeed": "admin.client", "FLRunner": "admin.embed",
         "follow_job": "admin.embed", "follow_jobs": "admin.embed"}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "AdminClient", "BadRequest", "Client", "Conflict", "Controller", "EndpointError", "EngineSpec", "EventType",
    "FLComponent", "FLContext", "FLContextKey", "FLContextManager", "FLRunner", "FlrunnerError", "Job",
    "JobFolderError", "JobStoreError", "NotFound", "ParentUnavailable", "RequestTimeout", "ReturnCode", "RunSnapshot",
    "RunStatus", "ServerEngineSpec", "Shareable", "Signal", "StatusFeed", "Unauthorized", "Widget", "Workspace",
    "WorkspaceError", "follow_job", "follow_jobs", "load_job_folder", "make_reply",
]

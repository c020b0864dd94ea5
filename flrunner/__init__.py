"""flrunner: the server-side job runtime for federated learning.

The public API shared by the parent, job processes, sites and embedding programs:
the engine spec (`ServerEngineSpec`), the types its methods use, the embedding handle
(`FLRunner`) and the admin client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .client import Client
from .component import Controller, FLComponent, Widget
from .errors import (BadRequest, Conflict, EndpointError, FlrunnerError, JobFolderError, JobStoreError, NotFound,
                     ParentUnavailable, RequestTimeout, Unauthorized, WorkspaceError)
from .events import EventType
from .fl_context import FLContext, FLContextKey, FLContextManager
from .fl_signal import Signal
from .job import Job, load_job_folder
from .lazy import lazy_attributes
from .shareable import ReturnCode, Shareable, make_reply
from .snapshot import RunSnapshot
from .spec import EngineSpec, ServerEngineSpec
from .status import RunStatus
from .workspace import Workspace

if TYPE_CHECKING:
    from .admin import AdminClient, StatusFeed
    from .embed import FLRunner, follow_job, follow_jobs

__version__ = "0.1.0"

#: Loaded on first use: a job process (and its start-up time and memory) never needs the admin
#: client, the embedding API or psutil.
_LAZY = {"AdminClient": "admin", "StatusFeed": "admin", "FLRunner": "embed", "follow_job": "embed",
         "follow_jobs": "embed"}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "AdminClient", "BadRequest", "Client", "Conflict", "Controller", "EndpointError", "EngineSpec", "EventType",
    "FLComponent", "FLContext", "FLContextKey", "FLContextManager", "FLRunner", "FlrunnerError", "Job",
    "JobFolderError", "JobStoreError", "NotFound", "ParentUnavailable", "RequestTimeout", "ReturnCode", "RunSnapshot",
    "RunStatus", "ServerEngineSpec", "Shareable", "Signal", "StatusFeed", "Unauthorized", "Widget", "Workspace",
    "WorkspaceError", "follow_job", "follow_jobs", "load_job_folder", "make_reply",
]

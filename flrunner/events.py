"""Event types fired to components (NVIDIA FLARE's `EventType` names and values)."""

from __future__ import annotations


class EventType:
    SYSTEM_START = "_system_start"
    SYSTEM_END = "_system_end"
    ABOUT_TO_START_RUN = "_about_to_start_run"
    START_RUN = "_start_run"
    ABOUT_TO_END_RUN = "_about_to_end_run"
    END_RUN = "_end_run"
    START_WORKFLOW = "_start_workflow"
    END_WORKFLOW = "_end_workflow"
    ABORT_TASK = "_abort_task"
    FATAL_SYSTEM_ERROR = "_fatal_system_error"
    JOB_DEPLOYED = "_job_deployed"
    JOB_STARTED = "_job_started"
    JOB_COMPLETED = "_job_completed"
    JOB_ABORTED = "_job_aborted"
    JOB_CANCELLED = "_job_cancelled"
    CLIENT_REGISTERED = "_client_registered"
    CLIENT_QUIT = "_client_quit"
    BEFORE_CHECK_RESOURCE_MANAGER = "_before_check_resource_manager"

"""The site side: the agent that logs in to the parent and runs jobs' site apps."""

from __future__ import annotations

from .agent import SiteAgent, default_resources, run_site
from .engine import ClientEngine
from .job import SiteJob
from .resources import ResourceManager

__all__ = ["ClientEngine", "ResourceManager", "SiteAgent", "SiteJob", "default_resources", "run_site"]

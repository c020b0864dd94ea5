"""The site side: the agent that logs in to the parent and runs jobs' site apps."""

from __future__ import annotations

from flrunner.site.agent import SiteAgent, default_resources, run_site
from flrunner.site.engine import ClientEngine
from flrunner.site.job import SiteJob
from flrunner.site.resources import ResourceManager

__all__ = ["ClientEngine", "ResourceManager", "SiteAgent", "SiteJob", "default_resources", "run_site"]

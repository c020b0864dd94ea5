"""Job folders for tests: built from the components in ``tests/job_components*.py``, or copied
from the sample FedAvg job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

from flrunner.examples import example_job

from .paths import TESTS

#: A component or executor in a job's config: ``(id, class, args)``.
Entry = Sequence[Any]


class JobFolders:
    """Writes job folders ``root/job1``, ``root/job2``, … (the builder behind the ``make_job`` fixture).

    A class is a name in ``tests/job_components.py`` or ``module.Class`` for any
    ``tests/job_components*.py`` module; all of those modules are copied into each app's ``custom/``.

    Args:
        root: the folder the jobs are written in.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def __call__(self, workflows: Iterable[Entry], components: Iterable[Entry] = (), name: str = "test-job",
                 site_app: dict | None = None, sites: list | None = None, **meta: Any) -> Path:
        """A new job folder.

        Args:
            workflows: the server's workflows, ``(id, class, args)`` each.
            components: the server's other components, likewise.
            name: the job's name.
            site_app: if given, ``{"components": [...], "executors": [(tasks, class, args), ...]}``,
                the sites' app.
            sites: where ``site_app`` is deployed: these site names (the server's app and the sites'
                app apart), or, if None, every site (one app for the server and every site).
            **meta: more fields of ``meta.json``.
        """
        self.count += 1
        folder = self.root / f"job{self.count}"
        server = {"format_version": 2, "workflows": _entries(workflows), "components": _entries(components)}
        if site_app is None:
            _app(folder / "app_server", {"config_fed_server.json": server})
            deploy_map = {"app_server": ["server"]}
        else:
            client = {"format_version": 2, "components": _entries(site_app.get("components", [])),
                      "executors": [{"tasks": list(tasks), "executor": {"path": _path(cls), "args": args}}
                                    for tasks, cls, args in site_app.get("executors", [])]}
            if sites:
                _app(folder / "app_server", {"config_fed_server.json": server})
                _app(folder / "app_site", {"config_fed_client.json": client})
                deploy_map = {"app_server": ["server"], "app_site": list(sites)}
            else:
                _app(folder / "app", {"config_fed_server.json": server, "config_fed_client.json": client})
                deploy_map = {"app": ["@ALL"]}
        (folder / "meta.json").write_text(json.dumps({"name": name, "deploy_map": deploy_map, **meta}))
        return folder


def _path(cls: str) -> str:
    return cls if "." in cls else f"job_components.{cls}"


def _entries(items: Iterable[Entry]) -> list[dict]:
    return [{"id": i, "path": _path(cls), "args": args} for i, cls, args in items]


def _app(folder: Path, configs: dict[str, dict]) -> None:
    (folder / "config").mkdir(parents=True)
    (folder / "custom").mkdir()
    for module in TESTS.glob("job_components*.py"):
        shutil.copy(module, folder / "custom" / module.name)
    for config_name, config in configs.items():
        (folder / "config" / config_name).write_text(json.dumps(config))


#: The sample FedAvg job that `job_copy` copies.
FEDAVG_JOB = example_job("fedavg")


def job_copy(tmp: Path, name: str, server_args: dict | None = None, trainer_args: dict | None = None) -> Path:
    """A copy of the sample FedAvg job in ``tmp/name``, with some workflow or trainer arguments changed."""
    folder = tmp / name
    shutil.copytree(FEDAVG_JOB, folder)
    for config, args, path in (("config_fed_server.json", server_args, ("workflows", 0, "args")),
                               ("config_fed_client.json", trainer_args, ("executors", 0, "executor", "args"))):
        if args:
            cfg_path = folder / "app" / "config" / config
            cfg = json.loads(cfg_path.read_text())
            target = cfg
            for key in path:
                target = target[key]
            target.update(args)
            cfg_path.write_text(json.dumps(cfg))
    return folder

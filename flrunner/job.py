"""The job folder: NVIDIA FLARE's layout, parsed and validated; and the `Job` object.

A job folder holds ``meta.json`` and one folder per app. ``deploy_map`` in ``meta.json`` maps
each app folder to the participants that run it: ``"server"``, site names, or ``"@ALL"``
(the server and every site). The server's app has ``config/config_fed_server.json``; an app
for sites has ``config/config_fed_client.json``; either may have ``custom/`` with Python code.

Validation happens once, at submit, and names the file and the field that is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flrunner.errors import JobFolderError
from flrunner.protocol import MAX_FIELD_DEPTH, deeper_than

META_FILE = "meta.json"
SERVER_CONFIG = "config/config_fed_server.json"
CLIENT_CONFIG = "config/config_fed_client.json"
SERVER = "server"
ALL_SITES = "@ALL"
RESOURCE_KEYS = frozenset({"num_cpus", "mem_gb", "num_gpus"})
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
#: A valid app folder or site name.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass
class ComponentDef:
    """One entry of a config's ``components`` or ``workflows`` list."""

    id: str
    path: str
    args: dict = field(default_factory=dict)


@dataclass
class ServerApp:
    """The parsed server app config."""

    name: str
    format_version: int
    workflows: list[ComponentDef]
    components: list[ComponentDef]


@dataclass
class ClientApp:
    """The parsed site app config: components, and executors with the tasks each serves."""

    name: str
    components: list[ComponentDef]
    executors: list[tuple[list[str], ComponentDef]]


@dataclass
class JobDefinition:
    """A validated job folder.

    Attributes:
        folder: where it was read from.
        meta: ``meta.json`` as read.
        name: the job name.
        deploy_map: app folder -> participants.
        server_app: the app deployed to ``"server"`` and its parsed config.
        min_clients: the sites the job needs: meta.json's ``min_clients``, else
            `default_min_clients`.
    """

    folder: Path
    meta: dict
    name: str
    deploy_map: dict[str, list[str]]
    server_app: ServerApp
    min_clients: int = 0
    mandatory_clients: list[str] = field(default_factory=list)
    resource_spec: dict[str, dict] = field(default_factory=dict)
    timeout: float | None = None


class Job:
    """A job as the engine API sees it (NVIDIA FLARE's `Job`)."""

    def __init__(self, job_id: str, resource_spec: dict, deploy_map: dict, meta: dict,
                 min_sites: int = 1, required_sites: list | None = None) -> None:
        self.job_id = job_id
        self.resource_spec = resource_spec
        self.deploy_map = deploy_map
        self.meta = meta
        self.min_sites = min_sites
        self.required_sites = list(required_sites or [])
        self.name = meta.get("name", job_id)

    def get_application_name(self, participant: str) -> str | None:
        """The app folder that ``participant`` runs, or None if it runs none."""
        for app, targets in self.deploy_map.items():
            if participant in targets:
                return app
        for app, targets in self.deploy_map.items():
            if ALL_SITES in targets:
                return app
        return None

    def site_participants(self) -> tuple[set[str], bool]:
        """(sites named in deploy_map, whether ``@ALL`` adds every site)."""
        return site_participants(self.deploy_map)

    def get_deployment(self) -> dict:
        return dict(self.deploy_map)

    def __repr__(self) -> str:
        return f"Job({self.job_id!r}, name={self.name!r})"


def site_participants(deploy_map: dict) -> tuple[set[str], bool]:
    """(sites named in a deploy map, whether ``@ALL`` adds every site)."""
    named: set[str] = set()
    everyone = False
    for targets in deploy_map.values():
        for t in targets:
            if t == ALL_SITES:
                everyone = True
            elif t != SERVER:
                named.add(t)
    return named, everyone


def _read_json(folder: Path, rel: str) -> Any:
    path = folder / rel
    if path.exists() and not _inside(path.resolve(), folder.resolve()):
        raise JobFolderError(rel, None, "resolves outside the job folder (a symlink leaves it)")
    if not path.is_file():
        raise JobFolderError(rel, None, "is missing")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise JobFolderError(rel, None, f"is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JobFolderError(rel, None, f"is not valid JSON ({exc})") from None
    except (RecursionError, ValueError) as exc:  # nested too deep for the parser; an integer too long
        raise JobFolderError(rel, None, f"cannot be read as JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _component_list(rel: str, key: str, value: Any, seen: set[str]) -> list[ComponentDef]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise JobFolderError(rel, key, f"must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise JobFolderError(rel, where, f"must be an object, got {type(item).__name__}")
        cid, path, args = item.get("id"), item.get("path"), item.get("args", {})
        if not isinstance(cid, str) or not cid:
            raise JobFolderError(rel, f"{where}.id", "must be a non-empty string")
        if cid in seen:
            raise JobFolderError(rel, f"{where}.id", f"duplicate id '{cid}'")
        seen.add(cid)
        if not isinstance(path, str) or not _PATH_RE.match(path):
            raise JobFolderError(rel, f"{where}.path", f"must be 'module.Class', got {path!r}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise JobFolderError(rel, f"{where}.args", f"must be an object, got {type(args).__name__}")
        unknown = set(item) - {"id", "path", "args", "name"}
        if unknown:
            raise JobFolderError(rel, where, f"unknown key(s) {', '.join(sorted(unknown))}")
        out.append(ComponentDef(cid, path, args))
    return out


def parse_server_app(app_dir: Path, app_name: str) -> ServerApp:
    """Parse and validate ``<app>/config/config_fed_server.json``."""
    rel = f"{app_name}/{SERVER_CONFIG}"
    cfg = _read_json(app_dir.parent, rel)
    if not isinstance(cfg, dict):
        raise JobFolderError(rel, None, f"must hold a JSON object, got {type(cfg).__name__}")
    fv = cfg.get("format_version", 2)
    if not isinstance(fv, int) or isinstance(fv, bool) or fv != 2:
        raise JobFolderError(rel, "format_version", f"must be 2, got {fv!r}")
    seen: set[str] = set()
    workflows = _component_list(rel, "workflows", cfg.get("workflows"), seen)
    components = _component_list(rel, "components", cfg.get("components"), seen)
    if not workflows:
        raise JobFolderError(rel, "workflows", "must list at least one workflow")
    return ServerApp(app_name, fv, workflows, components)


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_client_app(app_dir: Path, app_name: str) -> ClientApp:
    """Parse and validate ``<app>/config/config_fed_client.json``.

    Raises:
        JobFolderError: naming the file and field that is wrong.
    """
    rel = f"{app_name}/{CLIENT_CONFIG}"
    cfg = _read_json(app_dir.parent, rel)
    if not isinstance(cfg, dict):
        raise JobFolderError(rel, None, f"must hold a JSON object, got {type(cfg).__name__}")
    seen: set[str] = set()
    components = _component_list(rel, "components", cfg.get("components"), seen)
    raw = cfg.get("executors") or []
    if not isinstance(raw, list):
        raise JobFolderError(rel, "executors", f"must be a list, got {type(raw).__name__}")
    executors: list[tuple[list[str], ComponentDef]] = []
    tasks_seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"executors[{i}]"
        if not isinstance(entry, dict):
            raise JobFolderError(rel, where, "must be an object {'tasks': [...], 'executor': {...}}")
        tasks = entry.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise JobFolderError(rel, f"{where}.tasks", "must be a non-empty list of task names")
        for t in tasks:
            if t in tasks_seen:
                raise JobFolderError(rel, f"{where}.tasks", f"task '{t}' has two executors")
            tasks_seen.add(t)
        ex = entry.get("executor")
        if isinstance(ex, dict) and "id" not in ex:
            ex = {"id": f"executor_{i}", **ex}
        [cdef] = _component_list(rel, f"{where}.executor", [ex] if ex is not None else None, seen) or [None]
        if cdef is None:
            raise JobFolderError(rel, f"{where}.executor", "is missing")
        executors.append((list(tasks), cdef))
    return ClientApp(app_name, components, executors)


def _int_field(meta: dict, key: str, default: int) -> int:
    value = meta.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JobFolderError(META_FILE, key, f"must be a non-negative integer, got {value!r}")
    return value


def load_job_folder(folder: str | os.PathLike) -> JobDefinition:
    """Read and validate a job folder.

    Raises:
        JobFolderError: naming the file and field that is wrong.
    """
    root = Path(folder)
    if not root.is_dir():
        raise JobFolderError(str(folder), None, "is not a directory")
    meta = _read_json(root, META_FILE)
    if not isinstance(meta, dict):
        raise JobFolderError(META_FILE, None, f"must hold a JSON object, got {type(meta).__name__}")
    if deeper_than(meta, MAX_FIELD_DEPTH):  # meta travels in messages, whose fields nest at most that deep
        raise JobFolderError(META_FILE, None, f"nests deeper than {MAX_FIELD_DEPTH} levels")
    name = meta.get("name")
    if not isinstance(name, str) or not name.strip():
        raise JobFolderError(META_FILE, "name", f"must be a non-empty string, got {name!r}")
    if len(name) > 128 or any(c in name for c in "\n\r\0"):
        raise JobFolderError(META_FILE, "name", "must be at most 128 characters on one line")

    dm = meta.get("deploy_map")
    if not isinstance(dm, dict) or not dm:
        raise JobFolderError(META_FILE, "deploy_map",
                             f"must be a non-empty object mapping app folders to participants, got {dm!r:.80}")
    deploy_map: dict[str, list[str]] = {}
    server_apps = []
    deployed: dict[str, str] = {}  # participant -> the app it runs
    for app, targets in dm.items():
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise JobFolderError(META_FILE, f"deploy_map.{app}", "must be a non-empty list of participant names")
        for target in targets:
            clash = deployed.get(target) or deployed.get(ALL_SITES) or (
                next(iter(deployed.values())) if target == ALL_SITES and deployed else None)
            if clash is not None:
                raise JobFolderError(META_FILE, f"deploy_map.{app}",
                                     f"'{target}' would run two apps ('{clash}' and '{app}'); each participant runs one")
            deployed[target] = app
        if not NAME_RE.match(app) or app in (".", ".."):
            raise JobFolderError(META_FILE, f"deploy_map.{app}", "is not a valid app folder name")
        app_dir = root / app
        if app_dir.is_symlink() or not app_dir.is_dir():
            raise JobFolderError(META_FILE, f"deploy_map.{app}", f"app folder '{app}' is missing")
        if SERVER in targets or ALL_SITES in targets:
            server_apps.append(app)
        deploy_map[app] = list(targets)
    if len(server_apps) != 1:
        raise JobFolderError(META_FILE, "deploy_map",
                             f"exactly one app must be deployed to 'server', found {len(server_apps)}")
    server_app = parse_server_app(root / server_apps[0], server_apps[0])

    min_clients = _int_field(meta, "min_clients", default_min_clients(deploy_map))
    mandatory = meta.get("mandatory_clients", [])
    if not isinstance(mandatory, list) or not all(isinstance(s, str) and s for s in mandatory):
        raise JobFolderError(META_FILE, "mandatory_clients", "must be a list of site names")
    named, everyone = site_participants(deploy_map)
    unreachable = sorted(s for s in mandatory if not everyone and s not in named)
    if unreachable and named:
        raise JobFolderError(META_FILE, "mandatory_clients",
                             f"site(s) {', '.join(unreachable)} are not in deploy_map, so the job could never run there")
    rs = meta.get("resource_spec", {})
    if not isinstance(rs, dict):
        raise JobFolderError(META_FILE, "resource_spec", "must be an object mapping site names to requirements")
    for site, spec in rs.items():
        if not isinstance(spec, dict):
            raise JobFolderError(META_FILE, f"resource_spec.{site}", "must be an object")
        for k, v in spec.items():
            if k not in RESOURCE_KEYS:
                raise JobFolderError(META_FILE, f"resource_spec.{site}.{k}",
                                     f"unknown resource (known: {', '.join(sorted(RESOURCE_KEYS))})")
            if not _finite_number(v) or v < 0:
                raise JobFolderError(META_FILE, f"resource_spec.{site}.{k}", f"must be a non-negative number, got {v!r}")
    _int_field(meta, "max_restarts", 0)
    timeout = meta.get("timeout")
    if timeout is not None and (not _finite_number(timeout) or timeout <= 0):
        raise JobFolderError(META_FILE, "timeout", f"must be a positive number of seconds, got {timeout!r}")
    return JobDefinition(root, meta, name, deploy_map, server_app, min_clients, list(mandatory), dict(rs),
                         float(timeout) if timeout is not None else None)


def default_min_clients(deploy_map: dict) -> int:
    """The sites a job needs when its meta.json gives no ``min_clients``: one if it has an app
    for sites (a named site, or ``@ALL``), none for a server-only job."""
    named, everyone = site_participants(deploy_map)
    return 1 if (named or everyone) else 0


def job_from_meta(job_id: str, meta: dict) -> Job:
    """The `Job` of a job, from its ``meta.json`` (validated by `load_job_folder`, as the parent
    stores it): the one way a `Job` is made, so its defaults are the same wherever it is made
    (``min_clients``: `default_min_clients`)."""
    deploy_map = meta.get("deploy_map") or {}
    min_clients = meta.get("min_clients", default_min_clients(deploy_map))
    return Job(job_id, meta.get("resource_spec") or {}, deploy_map, meta, int(min_clients or 0),
               meta.get("mandatory_clients") or [])

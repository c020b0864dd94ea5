"""Unit tests of job folder validation (`flrunner.job.load_job_folder`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

import flrunner
from flrunner.errors import BadRequest, JobFolderError
from flrunner.job import Job, job_from_meta, load_job_folder

META = "meta.json"
SERVER_CFG = "app_server/config/config_fed_server.json"
HELLO = Path(flrunner.__file__).resolve().parent / "examples" / "hello"


def valid_meta() -> dict:
    return {
        "name": "unit-job",
        "deploy_map": {"app_server": ["server"], "app_site": ["site-1", "site-2"]},
        "min_clients": 1,
        "mandatory_clients": ["site-1"],
        "resource_spec": {"site-1": {"num_cpus": 1, "mem_gb": 0.5}},
        "timeout": 30,
    }


def valid_server_config() -> dict:
    return {
        "format_version": 2,
        "workflows": [{"id": "wf", "path": "mod.Workflow", "args": {"rounds": 2}}],
        "components": [{"id": "comp", "path": "pkg.mod.Component"}],
    }


def write_job(root: Path, meta: Any = None, server_cfg: Any = None, apps: tuple = ("app_server", "app_site"),
              raw_meta: str | None = None, raw_cfg: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for app in apps:
        (root / app / "config").mkdir(parents=True, exist_ok=True)
    if raw_meta is not None:
        (root / META).write_text(raw_meta)
    elif meta is not None:
        (root / META).write_text(json.dumps(meta))
    if "app_server" in apps:
        if raw_cfg is not None:
            (root / SERVER_CFG).write_text(raw_cfg)
        elif server_cfg is not None:
            (root / SERVER_CFG).write_text(json.dumps(server_cfg))
    return root


def with_meta(**changes: Any) -> Callable[[dict], None]:
    def mutate(meta: dict) -> None:
        for k, v in changes.items():
            if v is _DELETE:
                meta.pop(k, None)
            else:
                meta[k] = v
    return mutate


_DELETE = object()


# (case id, mutate meta, mutate server config, expected file, expected field or None)
CASES: list[tuple[str, Any, Any, str, str | None]] = [
    ("name-missing", with_meta(name=_DELETE), None, META, "name"),
    ("name-empty", with_meta(name=""), None, META, "name"),
    ("name-blank", with_meta(name="   "), None, META, "name"),
    ("name-not-str", with_meta(name=5), None, META, "name"),
    ("deploy_map-list", with_meta(deploy_map=["app_server"]), None, META, "deploy_map"),
    ("deploy_map-str", with_meta(deploy_map="app_server"), None, META, "deploy_map"),
    ("deploy_map-missing", with_meta(deploy_map=_DELETE), None, META, "deploy_map"),
    ("deploy_map-empty", with_meta(deploy_map={}), None, META, "deploy_map"),
    ("deploy_map-targets-not-list", with_meta(deploy_map={"app_server": "server"}), None, META,
     "deploy_map.app_server"),
    ("app-folder-missing", with_meta(deploy_map={"app_server": ["server"], "app_gone": ["site-1"]}), None, META,
     "deploy_map.app_gone"),
    ("zero-server-apps", with_meta(deploy_map={"app_site": ["site-1"]}), None, META, "deploy_map"),
    ("two-server-apps", with_meta(deploy_map={"app_server": ["server"], "app_site": ["@ALL"]}), None, META,
     "deploy_map.app_site"),
    ("min_clients-negative", with_meta(min_clients=-1), None, META, "min_clients"),
    ("min_clients-bool", with_meta(min_clients=True), None, META, "min_clients"),
    ("mandatory-str", with_meta(mandatory_clients="site-1"), None, META, "mandatory_clients"),
    ("mandatory-ints", with_meta(mandatory_clients=[1, 2]), None, META, "mandatory_clients"),
    ("mandatory-object", with_meta(mandatory_clients={"site-1": True}), None, META, "mandatory_clients"),
    ("resource_spec-list", with_meta(resource_spec=[]), None, META, "resource_spec"),
    ("resource-site-not-object", with_meta(resource_spec={"site-1": 3}), None, META, "resource_spec.site-1"),
    ("resource-unknown-key", with_meta(resource_spec={"site-1": {"gpus": 1}}), None, META,
     "resource_spec.site-1.gpus"),
    ("resource-negative", with_meta(resource_spec={"site-1": {"num_gpus": -1}}), None, META,
     "resource_spec.site-1.num_gpus"),
    ("resource-str", with_meta(resource_spec={"site-1": {"mem_gb": "4"}}), None, META,
     "resource_spec.site-1.mem_gb"),
    ("timeout-zero", with_meta(timeout=0), None, META, "timeout"),
    ("timeout-negative", with_meta(timeout=-5), None, META, "timeout"),
    ("timeout-str", with_meta(timeout="10"), None, META, "timeout"),
    ("timeout-bool", with_meta(timeout=True), None, META, "timeout"),
    ("format_version-1", None, lambda c: c.update(format_version=1), SERVER_CFG, "format_version"),
    ("format_version-str", None, lambda c: c.update(format_version="2"), SERVER_CFG, "format_version"),
    ("format_version-bool", None, lambda c: c.update(format_version=True), SERVER_CFG, "format_version"),
    ("workflows-missing", None, lambda c: c.pop("workflows"), SERVER_CFG, "workflows"),
    ("workflows-empty", None, lambda c: c.update(workflows=[]), SERVER_CFG, "workflows"),
    ("workflows-not-list", None, lambda c: c.update(workflows={"id": "wf"}), SERVER_CFG, "workflows"),
    ("workflow-not-object", None, lambda c: c.update(workflows=["mod.Workflow"]), SERVER_CFG, "workflows[0]"),
    ("component-without-id", None, lambda c: c["components"][0].pop("id"), SERVER_CFG, "components[0].id"),
    ("component-empty-id", None, lambda c: c["components"][0].update(id=""), SERVER_CFG, "components[0].id"),
    ("workflow-without-id", None, lambda c: c["workflows"][0].pop("id"), SERVER_CFG, "workflows[0].id"),
    ("duplicate-id-across-lists", None, lambda c: c["components"][0].update(id="wf"), SERVER_CFG,
     "components[0].id"),
    ("duplicate-id-in-list", None,
     lambda c: c["components"].append({"id": "comp", "path": "a.B"}), SERVER_CFG, "components[1].id"),
    ("bad-path-notdotted", None, lambda c: c["components"][0].update(path="notdotted"), SERVER_CFG,
     "components[0].path"),
    ("bad-path-missing", None, lambda c: c["workflows"][0].pop("path"), SERVER_CFG, "workflows[0].path"),
    ("bad-path-trailing-dot", None, lambda c: c["workflows"][0].update(path="mod."), SERVER_CFG,
     "workflows[0].path"),
    ("args-not-object", None, lambda c: c["workflows"][0].update(args=[1, 2]), SERVER_CFG, "workflows[0].args"),
    ("args-str", None, lambda c: c["components"][0].update(args="x=1"), SERVER_CFG, "components[0].args"),
    ("component-unknown-key", None, lambda c: c["components"][0].update(klass="x"), SERVER_CFG, "components[0]"),
]


@pytest.mark.parametrize("case,mut_meta,mut_cfg,file,fieldname", CASES, ids=[c[0] for c in CASES])
def test_invalid_job_folder_names_file_and_field(tmp_path, case, mut_meta, mut_cfg, file, fieldname):
    meta, cfg = valid_meta(), valid_server_config()
    if mut_meta:
        mut_meta(meta)
    if mut_cfg:
        mut_cfg(cfg)
    root = write_job(tmp_path / "job", meta, cfg)
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    err = ei.value
    assert isinstance(err, BadRequest) and err.rc == "BAD_REQUEST"
    assert err.file == file
    assert err.field == fieldname
    assert str(err).startswith(file)
    assert f"'{fieldname}'" in str(err)


def test_missing_meta_json(tmp_path):
    root = write_job(tmp_path / "job", None, valid_server_config())
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == META
    assert "meta.json" in str(ei.value) and "missing" in str(ei.value)


@pytest.mark.parametrize("raw", ["{not json", "", "\xff\xfe"], ids=["broken", "empty", "bad-utf8"])
def test_invalid_json_meta(tmp_path, raw):
    root = write_job(tmp_path / "job", server_cfg=valid_server_config())
    if raw == "\xff\xfe":
        (root / META).write_bytes(b"\xff\xfe{")
    else:
        (root / META).write_text(raw)
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == META
    assert "meta.json" in str(ei.value) and "not valid JSON" in str(ei.value)


@pytest.mark.parametrize("raw, words", [
    ("[" * 100_000 + "]" * 100_000, "RecursionError"),  # too deep for the JSON parser
    ('{"name": ' + "9" * 5000 + "}", "ValueError"),  # an integer too long to convert
])
def test_json_the_parser_cannot_take_is_a_job_folder_error_not_a_crash(tmp_path, raw, words):
    root = write_job(tmp_path / "job", server_cfg=valid_server_config())
    (root / META).write_text(raw)
    with pytest.raises(JobFolderError, match=f"cannot be read as JSON \\({words}") as ei:
        load_job_folder(root)
    assert ei.value.file == META


def test_meta_nested_deeper_than_a_message_field_may_be_is_refused(tmp_path):
    meta = valid_meta()
    deep: Any = 1
    for _ in range(100):
        deep = {"d": deep}
    meta["extra"] = deep
    root = write_job(tmp_path / "job", meta, valid_server_config())
    with pytest.raises(JobFolderError, match="nests deeper than 64 levels") as ei:
        load_job_folder(root)
    assert ei.value.file == META


def test_meta_not_an_object(tmp_path):
    root = write_job(tmp_path / "job", [valid_meta()], valid_server_config())
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == META and "must hold a JSON object" in str(ei.value)


def test_invalid_json_server_config(tmp_path):
    root = write_job(tmp_path / "job", valid_meta(), raw_cfg='{"workflows": [')
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == SERVER_CFG
    assert SERVER_CFG in str(ei.value) and "not valid JSON" in str(ei.value)


def test_server_config_missing(tmp_path):
    root = write_job(tmp_path / "job", valid_meta(), None)
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == SERVER_CFG
    assert str(ei.value).startswith(SERVER_CFG) and "missing" in str(ei.value)


def test_server_config_not_an_object(tmp_path):
    root = write_job(tmp_path / "job", valid_meta(), [valid_server_config()])
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == SERVER_CFG


def test_not_a_directory(tmp_path):
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(tmp_path / "nowhere")
    assert "nowhere" in str(ei.value) and "not a directory" in str(ei.value)


def test_app_folder_that_is_a_file_counts_as_missing(tmp_path):
    root = write_job(tmp_path / "job", valid_meta(), valid_server_config(), apps=("app_server",))
    (root / "app_site").write_text("not a folder")
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.field == "deploy_map.app_site" and "app_site" in str(ei.value)


@pytest.mark.parametrize("app", ["..", "../escape", "a/b", ".hidden"])
def test_bad_app_folder_names(tmp_path, app):
    meta = valid_meta()
    meta["deploy_map"] = {"app_server": ["server"], app: ["site-1"]}
    root = write_job(tmp_path / "job", meta, valid_server_config())
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == META and ei.value.field == f"deploy_map.{app}"


def test_symlinked_config_leaving_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(valid_server_config()))
    root = write_job(tmp_path / "job", valid_meta(), None)
    os.symlink(outside, root / SERVER_CFG)
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.file == SERVER_CFG and "symlink" in str(ei.value)


def test_symlinked_config_dir_leaving_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config_fed_server.json").write_text(json.dumps(valid_server_config()))
    root = write_job(tmp_path / "job", valid_meta(), None, apps=("app_site",))
    (root / "app_server").mkdir()
    os.symlink(outside, root / "app_server" / "config")
    with pytest.raises(JobFolderError):
        load_job_folder(root)


def test_nan_timeout_is_refused(tmp_path):
    root = write_job(tmp_path / "job", None, valid_server_config(),
                     raw_meta=json.dumps(valid_meta()).replace('"timeout": 30', '"timeout": NaN'))
    with pytest.raises(JobFolderError) as ei:
        load_job_folder(root)
    assert ei.value.field == "timeout"


def test_valid_folder_loads(tmp_path):
    root = write_job(tmp_path / "job", valid_meta(), valid_server_config())
    jd = load_job_folder(root)
    assert jd.name == "unit-job"
    assert jd.folder == root
    assert jd.deploy_map == {"app_server": ["server"], "app_site": ["site-1", "site-2"]}
    assert jd.server_app.name == "app_server"
    assert jd.server_app.format_version == 2
    assert [(w.id, w.path, w.args) for w in jd.server_app.workflows] == [("wf", "mod.Workflow", {"rounds": 2})]
    assert [(c.id, c.path, c.args) for c in jd.server_app.components] == [("comp", "pkg.mod.Component", {})]
    assert jd.min_clients == 1
    assert jd.mandatory_clients == ["site-1"]
    assert jd.resource_spec == {"site-1": {"num_cpus": 1, "mem_gb": 0.5}}
    assert jd.timeout == 30.0 and isinstance(jd.timeout, float)
    job = job_from_meta("job-1", jd.meta)
    assert isinstance(job, Job)
    assert job.name == "unit-job"
    assert job.get_application_name("server") == "app_server"
    assert job.get_application_name("site-2") == "app_site"
    assert job.get_application_name("site-9") is None
    assert job.required_sites == ["site-1"] and job.min_sites == 1


def test_minimal_folder_uses_defaults(tmp_path):
    meta = {"name": "m", "deploy_map": {"app_server": ["@ALL"]}}
    cfg = {"workflows": [{"id": "wf", "path": "a.B", "args": None}]}
    jd = load_job_folder(write_job(tmp_path / "job", meta, cfg, apps=("app_server",)))
    assert jd.server_app.format_version == 2
    assert jd.server_app.workflows[0].args == {}
    assert jd.server_app.components == []
    # Its server app is deployed to @ALL, so the sites run it too: it needs one site.
    assert (jd.min_clients, jd.mandatory_clients, jd.resource_spec, jd.timeout) == (1, [], {}, None)


@pytest.mark.parametrize("deploy_map, given, needs", [
    ({"app_server": ["server"], "app_site": ["site-1", "site-2"]}, None, 1),  # an app for sites: one site
    ({"app_server": ["@ALL"]}, None, 1),
    ({"app_server": ["server"]}, None, 0),  # server-only: no site
    ({"app_server": ["server"], "app_site": ["site-1"]}, 0, 0),  # what meta.json says wins
    ({"app_server": ["server"]}, 2, 2),
])
def test_min_clients_has_one_default_for_a_job_folder_and_its_stored_meta(tmp_path, deploy_map, given, needs):
    meta = {"name": "m", "deploy_map": deploy_map, **({"min_clients": given} if given is not None else {})}
    apps = tuple(deploy_map)
    jd = load_job_folder(write_job(tmp_path / "job", meta, valid_server_config(), apps=apps))
    assert jd.min_clients == needs
    # The parent makes the job's `Job` from the meta it stored: the same number of sites.
    assert job_from_meta("job-1", jd.meta).min_sites == needs


def test_example_hello_loads():
    jd = load_job_folder(HELLO)
    assert jd.name == "hello-flrunner"
    assert jd.server_app.name == "app_server"
    assert [w.id for w in jd.server_app.workflows] == ["hello"]
    assert [c.id for c in jd.server_app.components] == ["tally"]
    assert jd.min_clients == 1


@pytest.mark.parametrize("deploy_map, problem", [
    ({"app_server": ["server", "site-1"], "app_site": ["site-1"]}, "'site-1' would run two apps"),
    ({"app_server": ["@ALL"], "app_site": ["site-1"]}, "would run two apps"),
    ({"app_server": ["server"], "app_site": []}, "non-empty list"),
])
def test_each_participant_runs_one_app(tmp_path, deploy_map, problem):
    job = tmp_path / "job"
    for app in deploy_map:
        (job / app / "config").mkdir(parents=True)
    (job / "app_server" / "config" / "config_fed_server.json").write_text(
        json.dumps({"format_version": 2, "workflows": [{"id": "w", "path": "m.W"}]}))
    (job / "meta.json").write_text(json.dumps({"name": "j", "deploy_map": deploy_map}))
    with pytest.raises(JobFolderError) as err:
        load_job_folder(job)
    assert "deploy_map" in str(err.value) and problem in str(err.value)


def test_named_site_app_wins_over_all():
    from flrunner.job import Job

    job = Job("j", {}, {"app_site": ["site-1"], "app_server": ["server"], "app_all": ["@ALL"]}, {"name": "j"})
    assert job.get_application_name("site-1") == "app_site"
    assert job.get_application_name("site-9") == "app_all"

"""The engine API must match NVIDIA FLARE's ServerEngineSpec, as given in the seed document."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import flrunner
from child import ServerEngine
from flrunner import ServerEngineSpec
from flrunner.workspace import Workspace

SEED_CANDIDATES = [
    Path(__file__).resolve().parents[2] / "shared" / "seed" / "server_engine_spec.txt",
    Path("/work/shared/seed/server_engine_spec.txt"),
]
SEED = next((p for p in SEED_CANDIDATES if p.is_file()), SEED_CANDIDATES[-1])

_MISSING = object()


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def _parse_param(text: str) -> tuple[str, object]:
    default: object = _MISSING
    if "=" in text:
        text, raw = text.rsplit("=", 1)
        default = ast.literal_eval(raw.strip())
    name = text.split(":", 1)[0].strip()
    return name, default


def parse_seed(path: Path) -> dict[str, dict]:
    """{method name: {"abstract": bool, "params": [(name, default), ...]}} from the seed text."""
    methods: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        m = re.match(r"^(abstract\s+)?([A-Za-z_]\w*)\(", line)
        if not m or not line.endswith("[source]"):
            continue
        start = m.end()
        depth, i = 1, start
        while depth:
            depth += {"(": 1, ")": -1}.get(line[i], 0)
            i += 1
        params = [_parse_param(p) for p in _split_top_level(line[start:i - 1])]
        methods[m.group(2)] = {"abstract": bool(m.group(1)), "params": params}
    return methods


SEED_METHODS = parse_seed(SEED)


def _public_methods(cls: type) -> set[str]:
    return {n for n, v in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_seed_parses_as_expected():
    # A sanity check of the parser itself, so a broken parse cannot make the other tests vacuous.
    assert len(SEED_METHODS) == 17
    assert SEED_METHODS["send_aux_request"]["params"] == [
        ("targets", _MISSING), ("topic", _MISSING), ("request", _MISSING), ("timeout", _MISSING),
        ("fl_ctx", _MISSING), ("optional", False), ("secure", False)]
    assert SEED_METHODS["fire_and_forget_aux_request"]["abstract"] is False
    assert SEED_METHODS["check_client_resources"]["params"] == [
        ("job", _MISSING), ("resource_reqs", _MISSING), ("fl_ctx", _MISSING)]
    assert SEED_METHODS["get_clients"]["params"] == []


def test_spec_has_exactly_the_seed_methods():
    assert _public_methods(ServerEngineSpec) == set(SEED_METHODS)
    assert flrunner.ServerEngineSpec is ServerEngineSpec


@pytest.mark.parametrize("name", sorted(SEED_METHODS))
def test_spec_signature_matches_seed(name):
    sig = inspect.signature(getattr(ServerEngineSpec, name))
    params = list(sig.parameters.values())
    assert params[0].name == "self"
    got = [(p.name, _MISSING if p.default is inspect.Parameter.empty else p.default) for p in params[1:]]
    assert got == SEED_METHODS[name]["params"]
    for p in params[1:]:
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


def test_abstract_methods_match_seed():
    seed_abstract = {n for n, m in SEED_METHODS.items() if m["abstract"]}
    assert set(ServerEngineSpec.__abstractmethods__) == seed_abstract
    assert "fire_and_forget_aux_request" not in ServerEngineSpec.__abstractmethods__
    with pytest.raises(TypeError):
        ServerEngineSpec()  # type: ignore[abstract]


def test_server_engine_is_concrete_and_overrides_every_abstract_method(tmp_path):
    assert not ServerEngine.__abstractmethods__
    engine = ServerEngine("job-1", Workspace(tmp_path), link=None)
    assert isinstance(engine, ServerEngineSpec)
    for name, m in SEED_METHODS.items():
        impl = getattr(ServerEngine, name)
        if m["abstract"]:
            # defined by ServerEngine or a concrete base it shares with the site engine (EngineBase)
            assert not getattr(impl, "__isabstractmethod__", False), f"ServerEngine does not implement {name}"
            assert impl is not getattr(ServerEngineSpec, name)
        # whatever it overrides keeps the spec's parameter names and defaults
        spec_params = [(p.name, p.default) for p in inspect.signature(getattr(ServerEngineSpec, name)).parameters.values()]
        impl_params = [(p.name, p.default) for p in inspect.signature(impl).parameters.values()]
        assert impl_params == spec_params, name


def test_fire_and_forget_delegates_with_timeout_zero():
    calls = []

    class Recorder(ServerEngine):
        def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
            calls.append((targets, topic, request, timeout, fl_ctx, optional, secure))
            return {}

    eng = Recorder("j", Workspace("/nonexistent-workspace"), link=None)
    assert eng.fire_and_forget_aux_request(["a"], "t", "req", "ctx", optional=True) == {}
    assert calls == [(["a"], "t", "req", 0.0, "ctx", True, False)]

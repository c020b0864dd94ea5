"""The layers, checked on the source: what may import what.

- ``flrunner`` (the shared core, the CLI, the embedding API, the site agent) never imports the
  parent or the job process: they plug in through entry points (`flrunner.plugins`);
- the parent and the job process never import each other (a job process is started by module
  name, ``python -m child``);
- the transport (sockets, framing) knows no protocol op and no job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .support import ROOT


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package,forbidden", [
    ("flrunner", ("parent", "child")),
    ("parent", ("child",)),
    ("child", ("parent",)),
    ("flrunner.transport", ("flrunner.protocol", "flrunner.job", "flrunner.aux", "flrunner.admin", "flrunner.site")),
    ("flrunner.protocol", ("flrunner.admin", "flrunner.site", "flrunner.aux")),
])
def test_a_layer_does_not_import_the_layers_above_or_beside_it(package, forbidden):
    assert offenders(package, forbidden) == []

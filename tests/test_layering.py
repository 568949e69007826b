"""The architecture's one-way arrows: pipeline/ imports no adapter library and no higher floor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_PIPELINE = {"celery", "celery_batches", "kombu", "sqlalchemy", "alembic", "boto3", "botocore",
                         "redis", "fastapi", "starlette", "psycopg2", "requests", "db", "workers", "review"}
FLOORS = {"pipeline": set(), "db": {"pipeline"}, "workers": {"db", "pipeline"}, "review": {"workers", "db", "pipeline"},
          "cli": {"review", "workers", "db", "pipeline"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pipeline_source_imports_no_adapter_library() -> None:
    offenders = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        bad = _imports(path) & FORBIDDEN_IN_PIPELINE
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_floors_only_import_downwards() -> None:
    ours = set(FLOORS)
    for floor, allowed in FLOORS.items():
        for path in (REPO / floor).rglob("*.py"):
            upward = (_imports(path) & ours) - allowed - {floor}
            assert not upward, f"{path.relative_to(REPO)} imports a higher floor: {sorted(upward)}"


def test_importing_the_whole_pipeline_loads_no_adapter_module() -> None:
    code = (
        "import sys, pkgutil, importlib, pipeline, pipeline.training\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'): importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in {!r})\n"
        "print(','.join(bad))\n".format(sorted(FORBIDDEN_IN_PIPELINE - {"db", "workers", "review"}))
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bench_and_devservices_import_no_tests() -> None:
    """The benchmark harness and the service launchers it shares with the tests stand without the test suite."""
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("bench", "devservices")
        for path in (REPO / folder).rglob("*.py")
        if "tests" in _imports(path)
    ]
    assert offenders == []


def test_the_product_never_imports_the_service_launchers() -> None:
    """devservices/ starts throwaway services for tests and benchmarks; it is not shipped in the image."""
    offenders = [str(path.relative_to(REPO)) for floor in FLOORS for path in (REPO / floor).rglob("*.py")
                 if {"devservices", "tests", "bench"} & _imports(path)]
    assert offenders == []

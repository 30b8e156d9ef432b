"""The layers import one way, and every module of the six packages imports.

The allowed directions are written once, here (CONTRIBUTING.md explains them):

    orchestrator -> planner -> compiler -> costmodels
    orchestrator -> simulator -> planner.plan, costmodels     (the planner never imports the simulator)
    workers      -> planner.plan, compiler.spec, costmodels   (never the solver, never orchestrator)

Every ``import``/``from ... import`` in the packages' source counts, wherever it is: module level,
inside a function (lazy), or under ``if TYPE_CHECKING:``. ``bench/``, ``examples/`` and ``tests/``
may import anything and are not checked.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("costmodels", "compiler", "planner", "simulator", "workers", "orchestrator")

# importing package -> what of the project it may import (a module, or a package and all below it)
ALLOWED: dict[str, tuple[str, ...]] = {
    "costmodels": ("costmodels",),
    "compiler": ("compiler", "costmodels"),
    "planner": ("planner", "compiler", "costmodels"),
    "simulator": ("simulator", "planner.plan", "costmodels"),  # reads a plan document; never solves
    "workers": ("workers", "planner.plan", "compiler.spec", "costmodels"),
    "orchestrator": PACKAGES,
}

# (importing module, imported module) -> why it is tolerated. None today.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

# Modules that cannot import without an optional extra: module -> (extra, reason). Where the
# extra is installed (make test installs them all) they must import like the rest.
_SERVER = ("server", "the daemon: FastAPI, SQLAlchemy and prometheus-client")
OPTIONAL_EXTRAS: dict[str, tuple[str, str]] = {
    **{
        f"orchestrator.{m}": _SERVER
        for m in (
            "app",
            "auth",
            "control",
            "db",
            "dependencies",
            "errors",
            "leader",
            "metrics",
            "service",
            "store",
            "routers.deployments",
            "routers.graphs",
            "routers.plans",
            "routers.runs",
            "routers.simulations",
            "routers.system",
        )
    },
    "workers.kv_connector": ("vllm", "vLLM's KV connector base class, torch and safetensors"),
}
# top-level distributions each extra brings (a failed import of one of these means "extra missing")
EXTRA_MODULES = {
    "server": {"fastapi", "starlette", "sqlalchemy", "prometheus_client", "alembic", "uvicorn", "httpx", "psycopg"},
    "vllm": {"vllm", "torch", "safetensors", "transformers"},
}
# Modules imported in a test of their own: importing vLLM takes most of a minute on two cores.
HEAVY = {m for m, (extra, _) in OPTIONAL_EXTRAS.items() if extra == "vllm"}

# Python files under the packages that are not importable modules: path -> reason.
NOT_MODULES = {
    "orchestrator/migrations": "Alembic scripts: Alembic loads them by path (env.py runs the migration on load)",
}


def modules() -> list[str]:
    names = list(PACKAGES)
    for pkg in PACKAGES:
        names += [m.name for m in pkgutil.walk_packages([str(ROOT / pkg)], pkg + ".")]
    return sorted(names)


def source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def resolve_from(module: str, name: str) -> str:
    """What ``from module import name`` brings in: a submodule, or the module defining a public name."""
    if importlib.util.find_spec(module) is not None and (ROOT / module.replace(".", "/")).is_dir():
        if importlib.util.find_spec(f"{module}.{name}") is not None:
            return f"{module}.{name}"
        exports = getattr(importlib.import_module(module), "_EXPORTS", {})
        if name in exports:  # a package's public API re-exports from where the name is defined
            return exports[name]
    return module


def imports_of(path: Path, me: str | None = None) -> list[tuple[int, str, str]]:
    """(line, source text, imported project module) for every import in the file, nested ones too."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [resolve_from(base, a.name) for a in node.names] if is_project(base) else [base]
        else:
            continue
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        found += [(node.lineno, text, t) for t in dict.fromkeys(targets) if is_project(t)]
    return found


def allowed(importer: str, target: str) -> bool:
    layer = importer.split(".")[0]
    return any(target == ok or target.startswith(ok + ".") for ok in ALLOWED[layer])


def test_imports_go_one_way():
    bad, seen_exceptions = [], set()
    for path in source_files():
        importer = module_name(path)
        for line, text, target in imports_of(path):
            if allowed(importer, target):
                continue
            if (importer, target) in KNOWN_EXCEPTIONS:
                seen_exceptions.add((importer, target))
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {target}: {text.splitlines()[0]}")
    assert not bad, "imports against the layer directions (see CONTRIBUTING.md):\n" + "\n".join(bad)
    stale = set(KNOWN_EXCEPTIONS) - seen_exceptions
    assert not stale, f"known exceptions no longer present, remove them from KNOWN_EXCEPTIONS: {sorted(stale)}"


def test_no_private_names_across_packages():
    """A package uses another's public names only (``from compiler.spec import _REF`` was one)."""
    bad = []
    for path in source_files():
        importer = module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and not node.level
                and is_project(node.module or "")
                and node.module.split(".")[0] != importer.split(".")[0]
            ):
                bad += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: an upward import inside a function counts, and the public API resolves."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from planner import plan_spec\n    from . import catalog\n    import workers.executor\n"
    )
    got = [(line, t) for line, _, t in imports_of(probe, me="costmodels._layers_probe")]
    assert got == [(2, "planner.pipeline"), (3, "costmodels.catalog"), (4, "workers.executor")]
    assert not allowed("costmodels._layers_probe", "planner.pipeline")
    assert allowed("workers.units", "planner.plan") and not allowed("workers.units", "planner.ilp")
    assert allowed("workers.units", "compiler.spec") and not allowed("workers.units", "compiler.ir")
    assert resolve_from("compiler", "load_graph") == "compiler.spec"
    assert resolve_from("planner", "plan") == "planner.plan"


def test_every_python_file_is_a_module_or_listed():
    mods = set(modules())
    stray = [
        p
        for p in source_files()
        if module_name(p) not in mods
        and not any(p.relative_to(ROOT).as_posix().startswith(d + "/") for d in NOT_MODULES)
    ]
    assert not stray, f"files that pkgutil does not reach (add an __init__.py or list them in NOT_MODULES): {stray}"
    for folder in NOT_MODULES:
        assert (ROOT / folder).is_dir(), f"NOT_MODULES lists {folder}, which is gone"
    assert set(OPTIONAL_EXTRAS) <= mods, f"OPTIONAL_EXTRAS lists missing modules: {set(OPTIONAL_EXTRAS) - mods}"


def _import_all(names: list[str]) -> dict[str, dict | None]:
    """Import each module in a fresh interpreter (vLLM, Ray, torch stay out of the test process)."""
    script = (
        "import importlib, json, sys, traceback\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        out[name] = None\n"
        "    except BaseException as e:\n"
        "        out[name] = {'error': f'{type(e).__name__}: {e}', 'missing': getattr(e, 'name', None),\n"
        "                     'not_found': isinstance(e, ModuleNotFoundError)}\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_imports(names: list[str]) -> None:
    failed, skipped = [], []
    for name, err in _import_all(names).items():
        if err is None:
            continue
        extra = OPTIONAL_EXTRAS.get(name)
        missing = (err["missing"] or "").split(".")[0]
        if extra and err["not_found"] and missing in EXTRA_MODULES[extra[0]]:
            skipped.append(f"{name}: needs the '{extra[0]}' extra ({extra[1]}); {err['error']}")
        else:
            failed.append(f"{name}: {err['error']}")
    assert not failed, "modules that do not import:\n" + "\n".join(failed)
    if skipped:
        pytest.skip("optional extras not installed:\n" + "\n".join(skipped))


def test_every_module_imports():
    _check_imports([m for m in modules() if m not in HEAVY])


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_modules_import():
    _check_imports(sorted(HEAVY))


def test_public_api_is_light_and_complete():
    """Each package's __all__ resolves to its defining module, and importing the package loads none of them."""
    script = (
        "import importlib, json, sys\n"
        f"pkgs = {list(PACKAGES)!r}\n"
        "for p in pkgs: importlib.import_module(p)\n"
        "heavy = sorted(m for m in ('ray', 'vllm', 'torch', 'xdsl', 'pulp', 'fastapi', 'sqlalchemy', 'numpy')"
        " if m in sys.modules)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in pkgs and '.' in m)\n"
        "print(json.dumps({'heavy': heavy, 'loaded': loaded}))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout)
    assert got == {"heavy": [], "loaded": []}, got

    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        assert mod.__all__, pkg
        assert sorted(mod.__all__) == sorted(mod._EXPORTS), pkg
        for name in mod.__all__:
            value = getattr(mod, name)
            source = importlib.import_module(mod._EXPORTS[name])
            assert value is getattr(source, name), f"{pkg}.{name}"
            assert mod._EXPORTS[name].startswith(pkg + "."), f"{pkg}.{name} comes from another package"
        # the TYPE_CHECKING imports (for editors and type checkers) say the same as _EXPORTS
        tree = ast.parse((ROOT / pkg / "__init__.py").read_text())
        typed = {
            a.name: n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom)
            for a in n.names
            if n.module != "__future__" and n.module != "typing"
        }
        assert typed == mod._EXPORTS, pkg

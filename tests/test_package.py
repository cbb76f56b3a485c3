"""The package as users and tools see it: static `__all__` lists whose names all exist, the version in one place,
the licence and type marker shipped, and no benchmark code in the installed package."""
import ast
import importlib
import importlib.metadata
import importlib.resources
import pkgutil
from pathlib import Path

import pytest

import unifusion
from unifusion import samplers as S

MODULES = sorted(m.name for m in pkgutil.walk_packages(unifusion.__path__, "unifusion."))


@pytest.mark.parametrize("name", ["unifusion", *MODULES])
def test_all_is_a_static_list_of_existing_names(name):
    """Tools (IDEs, `from x import *`, doc generators) read `__all__` without running the module: one assignment of
    string literals, each naming something the module has."""
    mod = importlib.import_module(name)
    tree = ast.parse(Path(mod.__file__).read_text())
    assigned = [node for node in tree.body if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
                and any(isinstance(t, ast.Name) and t.id == "__all__"
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    if not hasattr(mod, "__all__"):
        assert not assigned
        return
    assert len(assigned) == 1 and isinstance(assigned[0], ast.Assign), f"{name}: __all__ is assigned more than once"
    value = assigned[0].value
    assert isinstance(value, (ast.List, ast.Tuple)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts), f"{name}: __all__ is computed"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing and len(set(mod.__all__)) == len(mod.__all__), (name, missing)


def test_every_registered_sampler_is_exported():
    assert {f.__name__ for f in S.SAMPLERS.values()} <= set(S.__all__)


def test_metrics_names_keep_their_old_home():
    """The metrics package re-exports every public name of its modules, so `unifusion.metrics.<name>` works."""
    from unifusion import metrics
    from unifusion.metrics import digits, distances, floors

    for mod in (digits, distances, floors):
        assert set(mod.__all__) <= set(metrics.__all__)
        assert all(getattr(metrics, n) is getattr(mod, n) for n in mod.__all__)


def test_installed_metadata_licence_and_markers():
    meta = importlib.metadata.metadata("unifusion")
    assert meta["Version"] == unifusion.__version__
    assert meta["License-Expression"] == "MIT"
    files = importlib.resources.files("unifusion")
    assert files.joinpath("py.typed").is_file()
    assert not files.joinpath("bench").is_dir(), "benchmarks live in the repository's bench/, not in the package"
    assert (Path(__file__).resolve().parents[1] / "LICENSE").read_text().startswith("MIT License")

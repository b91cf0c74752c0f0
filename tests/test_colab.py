"""colab/ notebooks: well-formed, clean, and calling only names the library has (fast); run end to end at
reduced settings through a real Jupyter kernel (slow; needs the `notebooks` extra)."""

import ast
import importlib
import json
import pathlib
import re

import pytest

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))

# per notebook: the reduced settings the slow test injects after its parameters cell ({out}: a temp dir)
SMALL = {
    "01_probes_quickstart.ipynb": 'BATCH = 8\nOUT = "{out}"',
    "02_batch_sweep.ipynb": 'TIERS = (4, 8)\nOUT = "{out}"\nTRAIN_OVERRIDES = {{"target_loss": 5.0}}',
    "03_toy_modarith.ipynb": (
        'OUT = "{out}"\nCHANGES = {{"stages": ("baseline", "muon"), "batches": (16, 32), '
        '"seeds": (0,), "max_steps": 600, "lr_multipliers": (0.5, 1.0)}}'
    ),
    # a small random GPT-2 (no download), one activation batch and one per-example-gradient chunk
    "04_probe_your_model.ipynb": 'PRETRAINED = False\nN_SEQ = 16\nSEQ_LEN = 32\nOUT = "{out}"',
}


def _load(path):
    return json.loads(path.read_text())


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _code(nb) -> list[str]:
    """Code cells as Python: IPython magics and shell lines (`%...`, `!...`) become comments."""
    return [re.sub(r"(?m)^(\s*)([%!])", r"\1# \2", _source(c)) for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_notebook_has_reduced_settings_for_the_slow_run():
    assert NOTEBOOKS, "colab/ holds no notebook"
    assert sorted(SMALL) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_nbformat4_with_one_parameters_cell(path):
    nb = _load(path)
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["cells"][0]["cell_type"] == "markdown" and _source(nb["cells"][0]).startswith("# ")
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "commit notebooks without outputs"
    assert sum("parameters" in c["metadata"].get("tags", ()) for c in code) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_compiles_and_uses_only_existing_library_names(path):
    """Every `from spectral_jax... import name` exists, and so does every `module.attr` read off an imported
    spectral_jax module (`import spectral_jax as sj` included): a renamed or removed public name fails here, not in
    a user's Colab session."""
    modules: dict[str, object] = {}
    checked = 0
    for i, src in enumerate(_code(_load(path))):
        tree = ast.parse(src, filename=f"{path.name}[code cell {i}]")
        compile(tree, path.name, "exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):  # import spectral_jax as sj / import spectral_jax.lens
                for alias in node.names:
                    if alias.name.startswith("spectral_jax"):
                        modules[alias.asname or alias.name] = importlib.import_module(alias.name)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spectral_jax"):
                mod = importlib.import_module(node.module)
                for alias in node.names:
                    value = getattr(mod, alias.name, None)
                    if value is None:
                        value = importlib.import_module(f"{node.module}.{alias.name}")
                    checked += 1
                    if isinstance(value, type(mod)):
                        modules[alias.asname or alias.name] = value
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                assert hasattr(modules[node.value.id], node.attr), f"{node.value.id}.{node.attr} in {path.name}"
                checked += 1
    assert checked, f"{path.name} uses no spectral_jax name"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_end_to_end_in_a_kernel(path, tmp_path):
    nbclient = pytest.importorskip("nbclient", reason='pip install -e ".[dev,notebooks]" to run the notebooks')
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", ()))
    out = tmp_path / "out"
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(SMALL[path.name].format(out=out)))
    nbclient.NotebookClient(
        nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 2, f"{path.name} showed {images} figures"
    assert any(out.rglob("*.json"))

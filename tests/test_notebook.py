"""notebooks/quickstart.ipynb runs top to bottom (slow: it trains for a few minutes)."""
import os

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_quickstart_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = os.path.join(REPO, "notebooks", "quickstart.ipynb")
    nb = nbformat.read(path, as_version=4)
    os.environ["QUICKSTART_DIR"] = str(tmp_path)  # the kernel inherits it: outputs stay in the test's tmp dir
    try:
        nbclient.NotebookClient(nb, timeout=1500, kernel_name="python3",
                                resources={"metadata": {"path": REPO}}).execute()
    finally:
        os.environ.pop("QUICKSTART_DIR", None)
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    # The PyTorch round trip preserved every tensor, and solve answered through both loaders.
    assert "every tensor equal after the round trip: True" in text
    assert text.count("'valid':") >= 2
    # The learning curve was drawn inline.
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert images
    assert os.path.exists(os.path.join(tmp_path, "run", "learning_curve.png"))

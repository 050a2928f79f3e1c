"""notebooks/studies.ipynb: a study's evidence from its result files alone, and a comparison of the reader's own
choosing that says what the study's report says of the same curves."""

import json
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from omegaconf import OmegaConf

from warp_lightning.cli import CONF_DIR
from warp_lightning.studies.results import read_results
from warp_lightning.studies.verdicts import write_report

REPO = Path(__file__).resolve().parents[2]
LANDED = REPO / "reports" / "results" / "smollm2"


def test_the_studies_notebook_gives_the_reports_comparison(tmp_path, monkeypatch):
    """Run on two committed result files (smollm2's WARP and EMA-anchor seed 0): its default question, the last
    LITI front over the RL curve at matched KL, prints the interval and MDE of the report's claim on those files."""
    results = tmp_path / "results" / "smollm2"
    results.mkdir(parents=True)
    for name in ("warp-s0", "ema_anchor-s0"):
        shutil.copy(LANDED / f"{name}.json.gz", results)
    write_report(OmegaConf.load(CONF_DIR / "study" / "smollm2.yaml"), read_results(tmp_path / "results", "smollm2"),
                 tmp_path / "reports" / "smollm2")
    claims = json.loads((tmp_path / "reports" / "smollm2" / "claims.json").read_text())["claims"]
    compared, = next(c for c in claims if c["claim"] == "the LITI front lies above the RL training curve")["comparisons"]
    monkeypatch.setenv("WARP_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("WARP_STUDY", "smollm2")
    nb = nbformat.read(REPO / "notebooks" / "studies.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "warp-s0          commit b6ccae0" in printed and "EMA_anchor: 1 seed(s), 11 points" in printed
    for metric in ("reward", "judge"):
        d = compared[metric]
        assert (f"{compared['what']} at matched KL, {metric}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                in printed)
        assert f"smallest effect it could see {d['mde']:.3f}; {compared['points']} matched points" in printed

"""The evaluation metrics of `studio eval` against closed forms, and short evaluations of the shipped model.

Single-threaded like the other engine tests (``one_thread``, conftest); the runs of the shipped model are
marked slow."""
import numpy as np
import pytest

from studio.evaluation.features import frechet, within_class_diversity

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    n, d = 200_000, 4
    a, b = np.array([1.0, 4.0, 0.25, 1.0]), np.array([1.0, 1.0, 1.0, 9.0])
    m1, m2 = np.zeros(d), np.array([1.0, -2.0, 0.0, 0.5])
    f1 = m1 + rng.standard_normal((n, d)) * np.sqrt(a)
    f2 = m2 + rng.standard_normal((n, d)) * np.sqrt(b)
    exact = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # = 5.25 + 1 + 0.25 + 4
    assert abs(frechet(f1, f2) - exact) < 0.05 * exact
    assert frechet(f1, f1) < 1e-6


def test_within_class_diversity_is_the_mean_pairwise_distance():
    feats = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [10.0, 1.0], [10.0, 3.0]])
    labels = np.array([0, 0, 1, 1, 1])
    # class 0: one pair at distance 5; class 1: distances 1, 3, 2 → mean 2
    assert abs(within_class_diversity(feats, labels) - (5.0 + 2.0) / 2) < 1e-12


@pytest.mark.slow
def test_guided_samples_of_the_shipped_model_are_recognised_well_above_chance():
    """A small, fast `studio eval`: 20 CFG-guided samples (w = 3, DDIM 20 steps) of the shipped digits model,
    read by the separate clean-image evaluator. Chance is 10 %."""
    from studio.sweep.evaluate import Setting, evaluate

    res = evaluate([Setting("cfg w=3", steps=20, scale=3.0)], n=20, fd_reference=200, progress_stream=None)
    row = res["results"][0]
    assert row["n"] == 20
    assert row["accuracy"] >= 0.7, row
    assert np.isfinite(row["frechet"]) and row["diversity"] > 0


def test_eval_report_checks_the_targets_and_the_tradeoff(tmp_path):
    import json

    from studio.sweep.eval_report import load, report

    rows = [dict(setting=f"cfg w={w}", guidance="cfg", scale=float(w), steps=50, eta=0.0, n=500, accuracy=a,
                 diversity=d, frechet=1.0) for w, a, d in ((1, 0.85, 3.0), (3, 0.94, 2.0), (5, 0.99, 2.5))]
    rows.append(dict(setting="unconditional", guidance="none", scale=None, steps=50, eta=0.0, n=500, frechet=2.0,
                     diversity=3.0, class_fractions=[0.1] * 9 + [0.04]))
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": rows}))
    text = report(load([path]))
    lines = text.splitlines()
    assert next(ln for ln in lines if ln.startswith("| 1 |")).endswith("≥ 0.80 | yes |")
    assert next(ln for ln in lines if ln.startswith("| 3 |")).endswith("≥ 0.95 | **no** |")
    assert "accuracy non-decreasing in w: yes; diversity non-increasing in w: **no**" in text
    assert "[5%, 20%]: **no** (min 0.040" in text
    assert "DDIM Table 1" not in text  # no such rows, no empty table


@pytest.mark.slow
def test_eval_cli_runs_only_the_chosen_cells_and_rejects_a_bad_eta(capsys):
    """`studio eval --only ddim_table --ddim-steps 2 --ddim-etas 0.5` runs that one cell (to split a long run)."""
    import json

    from studio.cli import main

    assert main(["eval", "--only", "ddim_table", "--ddim-steps", "2", "--ddim-etas", "0.5", "--n", "10",
                 "--json", "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(r["setting"], r["steps"], r["eta"], r["n"]) for r in rows] == [("ddim eta=0.5 S=2", 2, 0.5, 10)]
    assert sum(rows[0]["class_fractions"]) == pytest.approx(1.0, abs=1e-3)

    assert main(["eval", "--only", "ddim_table", "--ddim-etas", "1.5", "--n", "10"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ddim-etas" in err[0]

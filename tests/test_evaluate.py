"""The evaluation metrics of `studio eval` against closed forms, and short evaluations of the shipped model.

Single-threaded like the other engine tests (``one_thread``, conftest); the runs of the shipped model are
marked slow."""
import numpy as np
import pytest

from studio.evaluation.features import frechet, within_class_diversity
from studio.evaluation.metrics import COST, EVALUATOR, EXACT, METRICS, Samples, available_metrics, measure

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


def _cell(label: int, pred, seconds: float, nfe: int = 10, **arrays) -> Samples:
    n = len(pred)
    return Samples(label=np.full(n, label), nfe=np.full(n, nfe), seconds=seconds, classes=10,
                   arrays={"pred": np.array(pred), "features": np.arange(2.0 * n).reshape(n, 2) ** 1.5, **arrays},
                   mixture_weights=np.array([0.4, 0.3, 0.2, 0.1]))


def test_a_settings_metrics_are_each_formula_over_all_its_images():
    """Pooling cells is computing over all their images: accuracy counts every labelled image, class
    fractions every unlabelled one, the cost is per image, frechet only against a reference."""
    a, b = _cell(3, [3, 3, 1, 3], seconds=2.0), _cell(5, [5, 2, 5, 5, 5, 5], seconds=6.0, nfe=20)
    u = _cell(-1, [0, 0, 1, 9], seconds=1.0)
    pooled = Samples.pooled([a, b, u])
    m = measure(list(METRICS.values()), pooled)
    assert m["accuracy"] == pytest.approx((3 + 5) / 10)
    assert m["class_fractions"] == [0.5, 0.25, 0, 0, 0, 0, 0, 0, 0, 0.25]
    assert m["seconds_per_image"] == pytest.approx(9.0 / 14) and m["nfe"] == pytest.approx((10 * 8 + 20 * 6) / 14)
    assert "frechet" not in m and "weight_error" not in m  # no reference; no posteriors kept
    feats = pooled.arrays["features"]
    groups = np.concatenate([[3] * 4, [5] * 6, [0, 0, 1, 9]])  # requested labels, else the evaluator's reading
    per_class = [np.mean([np.linalg.norm(feats[i] - feats[j]) for i in np.flatnonzero(groups == g)
                          for j in np.flatnonzero(groups == g) if i != j]) for g in (0, 3, 5)]
    assert m["diversity"] == pytest.approx(np.mean(per_class))
    ref = np.random.default_rng(1).standard_normal((50, 2))
    with_ref = measure([METRICS["frechet"]], Samples.pooled([a, b, u], reference=lambda: ref))
    assert with_ref["frechet"] == pytest.approx(frechet(feats, ref))
    one = measure(list(METRICS.values()), a)  # a cell alone: the same formulas over its own images
    assert one["accuracy"] == 0.75 and one["nfe"] == 10 and "class_fractions" not in one


def test_the_mixture_weight_error_is_the_total_variation_to_the_weights_asked_for():
    post_u = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # carries (0.5, 0.5, 0, 0); asked for π
    post_l = np.array([[0, 0, 1.0, 0], [0, 0, 0.5, 0.5]])  # label 2: asked for (0, 0, 1, 0)
    u = _cell(-1, [0, 0], 1.0, posterior=post_u)
    lab = _cell(2, [0, 0], 1.0, posterior=post_l)
    assert measure([METRICS["weight_error"]], u)["weight_error"] == pytest.approx(0.5 * (0.1 + 0.2 + 0.2 + 0.1))
    assert measure([METRICS["weight_error"]], lab)["weight_error"] == pytest.approx(0.5 * (0.25 + 0.25))
    # pooled: the weights carried by all four images against the mean of what each was asked for
    both = measure([METRICS["weight_error"], METRICS["component_weights"]], Samples.pooled([u, lab]))
    carried, asked = np.array([0.25, 0.25, 0.375, 0.125]), np.array([0.2, 0.15, 0.6, 0.05])
    assert both["weight_error"] == pytest.approx(0.5 * np.abs(carried - asked).sum())
    assert both["component_weights"] == carried.tolist()


def test_what_a_model_can_measure_follows_from_what_each_metric_needs(tmp_path):
    cost = tuple(name for name, m in METRICS.items() if m.needs is None)
    assert cost == COST == ("seconds_per_image", "nfe")
    assert available_metrics("gmm") == ("weight_error", "ref_distance", "component_weights") + cost
    assert available_metrics(str(tmp_path)) == cost  # a model folder without an evaluator
    (tmp_path / "evaluator").mkdir()
    (tmp_path / "evaluator" / "config.json").write_text('{"num_classes": 10}')
    assert available_metrics(str(tmp_path)) == ("accuracy", "diversity", "frechet", "class_fractions") + cost
    assert all(m.label and (m.needs in (None, EVALUATOR, EXACT)) for m in METRICS.values())


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
    rows.append(dict(setting="ddim eta=0 S=10", guidance="none", scale=None, steps=10, eta=0.0, n=40, frechet=3.5,
                     diversity=3.0, class_fractions=[0.1] * 10, fd_reference=300))
    path.write_text(json.dumps({"results": rows}))
    text = report(load([path]))
    assert "| 0 | 3.50 |" in text and "to 300 held-out images; 40 unconditional samples" in text


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


@pytest.mark.slow
def test_an_interrupted_text_evaluation_continues_with_only_the_missing_chunks(tmp_path):
    """`studio eval --model digits-text` keeps each chunk of images as it is drawn: a run cancelled after four
    of six chunks (through the cancel event, set by the chunk hook) leaves those four, the next run draws only
    the other two, and its results equal those of a run that was never interrupted."""
    import threading

    from studio.core.cancel import Cancelled, cancellable
    from studio.core.loading import TEXT_MODEL_DIR
    from studio.sweep.cells import CELLS
    from studio.sweep.evaluate import evaluate_text

    if not (TEXT_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("the digits-text model is not in this checkout")
    kw = dict(n=10, groups=["cfg"], cfg_scales=(1, 3), seed=3, steps=2, batch=4)  # 2 settings × 3 chunks

    def run(out, stop_after=None):
        seen, stop = [], threading.Event()

        def on_chunk(chunk, computed):
            seen.append((chunk.setting, chunk.index, computed))
            if stop_after is not None and len(seen) == stop_after:
                stop.set()

        with cancellable(stop):
            res = evaluate_text(TEXT_MODEL_DIR, out=out, on_chunk=on_chunk, **kw)
        return res, seen

    with pytest.raises(Cancelled):
        run(tmp_path / "a", stop_after=4)
    assert len(list((tmp_path / "a" / CELLS).rglob("result.json"))) == 4
    resumed, seen = run(tmp_path / "a")
    assert [computed for _, _, computed in seen] == [False] * 4 + [True] * 2  # only the missing chunks drawn
    whole, seen = run(tmp_path / "b")
    assert all(computed for _, _, computed in seen) and len(seen) == 6
    drop = lambda res: [{k: v for k, v in r.items() if k != "seconds"} for r in res["results"]]  # noqa: E731
    assert drop(resumed) == drop(whole) and len(drop(whole)) == 2
    assert [r["n"] for r in whole["results"]] == [10, 10]


def test_word_order_settings_ask_for_the_held_in_rows_in_other_orders():
    """The word-order group draws the held-in (digit, fg, bg) rows, worded with the background first or the
    colour after the digit; what each prompt says, read by the words around each colour, is its row."""
    from studio.evaluation import text_eval
    from studio.training.text_pretrain import caption_targets

    settings = text_eval.planned_settings(20, groups=("cfg", "word_order"), cfg_scales=(3,))
    held_in, reordered = settings[0], settings[1:]
    assert [s.name for s in reordered] == [f"held-in, {o} w=3" for o in text_eval.WORD_ORDERS]
    for s in reordered:
        assert np.array_equal(s.rows, held_in.rows) and s.guidance == 3.0
        assert s.prompts != held_in.prompts
        for prompt, row in zip(s.prompts, s.rows):
            assert caption_targets(prompt)[:3] == tuple(int(v) for v in row), prompt
    assert reordered[0].prompts[0].startswith("on a ") and " in " in reordered[1].prompts[0]

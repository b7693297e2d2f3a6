"""selfsup report: run directories read robustly, every plot drawn, report.md and a self-contained
report.html holding the same sections, the comparison table of several runs.

``make_run`` builds a complete fake run directory (every file of notes/EVAL_FILES.md) in a few
milliseconds; ``tests/e2e/test_report_browser.py`` reuses it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from selfsup.config import Config, dump_config
from selfsup.errors import CheckpointError
from selfsup.report import ReportPaths, collect_run, embedding_map, write_report
from selfsup.report.plots import cap_confusion, row_normalize
from selfsup.report.sections import comparison_table, correlation_pairs, fmt, fmt_duration

DIGITS = [str(d) for d in range(10)]
# Every plot a complete run draws (file stems under plots/).
ALL_PLOTS = {
    "training",
    "monitor",
    "embedding_map",
    "confusion_knn",
    "confusion_linear",
    "fewshot",
    "layer_weights",
    "checkpoint_study",
}


def _json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _confusion(k: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 4, size=(k, k)) + np.diag(rng.integers(20, 40, size=k))
    return matrix.tolist()


def make_run(
    root: Path,
    name: str = "run",
    *,
    steps: int = 30,
    evals: bool = True,
    knn_top1: float = 91.0,
    peak_memory_mb: float | None = 812.0,
    wall_seconds: float = 95.0,
    samples_per_s: float = 1234.5,
    method: str = "simclr",
) -> Path:
    """A run directory with config, summary, run.json, metrics.jsonl and (``evals``) every eval file."""
    run = root / name
    run.mkdir(parents=True)
    config = Config()
    config.method.name, config.encoder.name, config.data.source = method, "small_cnn", "digits:train"
    (run / "config.yaml").write_text(dump_config(config))
    summary: dict[str, Any] = {
        "method": method,
        "encoder": "small_cnn",
        "data": "digits:train",
        "modality": "image",
        "samples": 1438,
        "steps": steps,
        "final_loss": 4.25,
        "samples_per_s": samples_per_s,
        "wall_seconds": wall_seconds,
        "knn_top1@20": knn_top1 - 1.0,  # the monitor's value differs from eval/knn.json's on purpose
    }
    if peak_memory_mb is not None:
        summary["peak_memory_mb"] = peak_memory_mb
    _json(run / "summary.json", summary)
    _json(run / "run.json", {"device": "cpu", "precision": "fp32", "world_size": 1, "seed": 0})
    lines = []
    for step in range(1, steps + 1):
        lr = 0.005 * 0.5 * (1 + math.cos(math.pi * step / steps))
        lines.append(
            {"step": step, "kind": "train", "loss": 7.0 - step / steps, "lr": lr, "samples_per_s": 1000.0}
        )
        if step % 10 == 0:
            lines.append(
                {
                    "step": step,
                    "kind": "knn",
                    "knn_top1@20": 80.0 + step / 3,
                    "knn_top1@200": 78.0 + step / 3,
                    "online_top1": 70.0 + step / 2,
                    "rankme": 20.0 + step,
                }
            )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if not evals:
        return run
    eval_dir = run / "eval"
    per_class = {"accuracy": [90.0 + d / 2 for d in range(10)]}
    _json(
        eval_dir / "knn.json",
        {
            "protocol": "knn",
            "train": "digits:train",
            "test": "digits:test",
            "metrics": {"top1@20": knn_top1, "top5@20": 99.5, "top1@200": knn_top1 - 2},
            "classes": DIGITS,
            "confusion": _confusion(10, 0),
            "per_class": per_class,
        },
    )
    grid = [
        {"features": "pooled", "lr": lr, "weight_decay": wd, "val_top1": 80 + 10 * lr + wd}
        for lr in (0.1, 0.3, 1.0)
        for wd in (0.0, 1e-4)
    ]
    _json(
        eval_dir / "linear.json",
        {
            "protocol": "linear",
            "train": "digits:train",
            "test": "digits:test",
            "metrics": {"top1": 93.5, "top5": 99.9},
            "selected": {"features": "pooled", "lr": 1.0, "weight_decay": 0.0001},
            "grid": grid,
            "baselines": {"random init": {"top1": 40.0, "top5": 80.0}, "raw inputs": {"top1": 88.0}},
            "classes": DIGITS,
            "confusion": _confusion(10, 1),
        },
    )

    def fewshot(base: float) -> list[dict[str, Any]]:
        return [
            {"setting": f"{n} per class", "mean": base + 3 * n, "std": 1.5, "values": [base + 3 * n] * 5}
            for n in (1, 5, 10)
        ]

    _json(
        eval_dir / "fewshot.json",
        {
            "protocol": "fewshot",
            "train": "digits:train",
            "test": "digits:test",
            "metrics": {"top1@1": 63.0},
            "results": fewshot(60.0),
            "results_by_features": {
                "encoder": fewshot(60.0),
                "random init": fewshot(40.0),
                "raw": fewshot(55.0),
            },
        },
    )
    _json(
        eval_dir / "layer.json",
        {
            "protocol": "layer",
            "train": "digits:train",
            "test": "digits:test",
            "metrics": {"top1": 92.0},
            "layer_weights": [0.05, 0.15, 0.5, 0.3],
            "layers": ["stem", "block 1", "block 2", "block 3"],
        },
    )
    checkpoints = [{"step": s, "rankme": 10.0 + s, "knn_top1@20": 80.0 + s / 2} for s in (10, 20, 30)]
    _json(
        eval_dir / "rankme.json",
        {
            "protocol": "rankme",
            "train": None,
            "test": "digits:test",
            "metrics": {"rankme": 40.0},
            "checkpoints": checkpoints,
            "correlation": {"rankme~knn_top1@20": {"spearman": 1.0, "kendall": 1.0, "n": 3}},
        },
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=400)
    features = rng.normal(size=(400, 16)) + 4 * np.eye(16)[labels]
    _json(eval_dir / "embedding_map.json", embedding_map(features, labels, DIGITS, max_points=300))
    return run


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), path
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert min(pixels.shape) >= 200, (path, pixels.shape)
    assert pixels.std() > 5, f"{path} looks blank"


def _headings(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("#")]


# --- embedding map -------------------------------------------------------------------------------


def test_embedding_map_is_sklearns_pca_with_its_signs() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    labels = rng.integers(-1, 5, size=300)
    record = embedding_map(features, labels, list("abcde"), max_points=5000)
    reference = PCA(n_components=2, svd_solver="full").fit(features)
    np.testing.assert_allclose(np.array(record["points"]), reference.transform(features), atol=1e-8)
    np.testing.assert_allclose(record["explained_variance_ratio"], reference.explained_variance_ratio_)
    assert record["labels"] == labels.tolist() and record["classes"] == list("abcde")
    assert record["method"] == "pca" and record["total"] == 300


def test_embedding_map_subsample_is_seeded_and_ordered() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(500, 6))
    labels = np.arange(500) % 7  # label = index mod 7, so kept labels reveal which rows were kept
    a = embedding_map(features, labels, None, max_points=50, seed=3)
    b = embedding_map(features, labels, None, max_points=50, seed=3)
    c = embedding_map(features, labels, None, max_points=50, seed=4)
    assert a == b and a["points"] != c["points"] and len(a["points"]) == 50
    kept = np.sort(np.random.default_rng(3).choice(500, size=50, replace=False))
    assert a["labels"] == (kept % 7).tolist()
    from sklearn.decomposition import PCA

    reference = PCA(n_components=2, svd_solver="full").fit_transform(features[kept])
    np.testing.assert_allclose(np.abs(np.array(a["points"])), np.abs(reference), atol=1e-8)


def test_embedding_map_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="labels"):
        embedding_map(np.zeros((4, 3)), np.zeros(5, dtype=int), None)
    with pytest.raises(ValueError, match="NaN"):
        embedding_map(np.full((4, 3), np.nan), np.zeros(4, dtype=int), None)


# --- pure helpers --------------------------------------------------------------------------------


def test_confusion_is_capped_by_support_and_normalised_by_row() -> None:
    matrix = np.array([[5, 1, 0, 0], [0, 1, 0, 0], [2, 0, 7, 1], [0, 0, 1, 3]])
    capped, names = cap_confusion(matrix, ["a", "b", "c", "d"], max_classes=3)
    # Supports 6, 1, 10, 4: keep a and c (in their order), sum b and d into "other".
    assert names == ["a", "c", "other (2)"]
    np.testing.assert_array_equal(capped, [[5, 0, 1], [2, 7, 1], [0, 1, 1 + 3]])
    assert capped.sum() == matrix.sum()
    unchanged, same = cap_confusion(matrix, list("abcd"), max_classes=4)
    assert unchanged is matrix and same == list("abcd")
    percent = row_normalize(np.array([[1, 3], [0, 0]]))
    np.testing.assert_allclose(percent, [[25.0, 75.0], [0.0, 0.0]])


def test_many_classes_are_drawn(tmp_path: Path) -> None:
    from selfsup.report import plots

    confusion = _confusion(45, 2)
    names = [f"class {i}" for i in range(45)]
    _png_ok(plots.plot_confusion(confusion, names, tmp_path / "confusion.png", "45 classes"))
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 45, size=500)
    record = embedding_map(rng.normal(size=(500, 8)), labels, names)
    _png_ok(plots.plot_embedding_map(record, tmp_path / "map.png", "45 classes"))
    weights = np.full(30, 1 / 30).tolist()
    _png_ok(plots.plot_layer_weights(weights, None, tmp_path / "layers.png", "30 layers"))
    with pytest.raises(ValueError, match="3 layer names for 30"):
        plots.plot_layer_weights(weights, ["a", "b", "c"], tmp_path / "bad.png", "names")


def test_cell_formats() -> None:
    assert [fmt(None), fmt(3), fmt(97.8333), fmt(12345.6), fmt("x"), fmt(float("nan"))] == [
        "-",
        "3",
        "97.83",
        "12,346",
        "x",
        "nan",
    ]
    assert [fmt_duration(59.94), fmt_duration(150), fmt_duration(9000), fmt_duration(None)] == [
        "59.9 s",
        "2.5 min",
        "2.5 h",
        "-",
    ]


def test_correlation_is_computed_when_the_file_has_none() -> None:
    rising = [{"step": s, "rankme": float(s), "alpha": float(-s), "knn_top1@20": 50.0 + s} for s in range(5)]
    pairs = {(score, target): stats for score, target, stats in correlation_pairs({"checkpoints": rising})}
    assert set(pairs) == {("rankme", "knn_top1@20"), ("alpha", "knn_top1@20")}
    assert pairs["rankme", "knn_top1@20"]["spearman"] == pytest.approx(1.0)
    assert pairs["alpha", "knn_top1@20"]["kendall"] == pytest.approx(-1.0)
    # A constant score has no rank correlation: reported as NaN, not as a number.
    flat = [{"step": s, "rankme": 3.0, "knn_top1@20": float(s)} for s in range(4)]
    assert math.isnan(correlation_pairs({"checkpoints": flat})[0][2]["spearman"])


# --- one run -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportPaths]:
    """The report of a complete run, drawn once for the tests that only read it."""
    run = make_run(tmp_path_factory.mktemp("full"))
    return run, write_report(run)


def test_every_plot_is_drawn_and_every_section_appears(full_report: tuple[Path, ReportPaths]) -> None:
    run, paths = full_report
    assert paths.md == (run / "report.md").resolve() and paths.html == (run / "report.html").resolve()
    assert paths.notes == ()
    assert {p.stem for p in paths.plots} == ALL_PLOTS
    for plot in paths.plots:
        assert plot.parent == (run / "plots").resolve()
        _png_ok(plot)
    markdown = paths.md.read_text()
    headings = _headings(markdown)
    for title in (
        "## Summary",
        "## Training",
        "## Monitor during training",
        "## Evaluation",
        "## Embedding map",
    ):
        assert title in headings
    for protocol in ("knn", "linear", "fewshot", "layer", "rankme"):
        assert f"### {protocol} (eval/{protocol}.json)" in headings
    assert "## Notes" not in headings
    for stem in ALL_PLOTS:  # report.md links every PNG, relative to itself
        assert f"](plots/{stem}.png)" in markdown
    # Every eval file's metrics, the few-label table and the correlation table.
    assert "| top1@20 | 91 |" in markdown and "| top1 | 93.5 |" in markdown
    assert "| 1 per class | 63.00 ± 1.50 (n=5) | 43.00 ± 1.50 (n=5) | 58.00 ± 1.50 (n=5) |" in markdown
    assert "| rankme ~ knn_top1@20 | 1 | 1 | 3 |" in markdown
    assert "| random init | 40 | 80 |" in markdown and "| raw inputs | 88 | - |" in markdown
    # The linear probe's grid, best validation top-1 first.
    grid_rows = [line for line in markdown.splitlines() if line.startswith("| pooled |")]
    assert grid_rows[0] == "| pooled | 1 | 0.0001 | 90 |" and len(grid_rows) == 6
    # The HTML holds the same section titles.
    html = paths.html.read_text()
    html_titles = re.findall(r"<h[23]>([^<]*)</h[23]>", html)
    assert [h.split(" ", 1)[1] for h in headings[1:]] == [t.replace("&#x27;", "'") for t in html_titles]


def test_html_is_self_contained_and_inlines_every_plot(full_report: tuple[Path, ReportPaths]) -> None:
    _, paths = full_report
    html = paths.html.read_text()
    assert not re.search(r"https?://", html)
    assert not re.search(r"<link\b|@import|url\(", html)
    sources = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script src" not in html and "default-src 'none'" in html
    inlined = sorted(base64.b64decode(s.split(",", 1)[1]) for s in sources)
    assert inlined == sorted(p.read_bytes() for p in paths.plots)


def test_sections_without_data_do_not_appear(tmp_path: Path) -> None:
    run = make_run(tmp_path, evals=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r["kind"] == "train"))
    paths = write_report(run)
    headings = _headings(paths.md.read_text())
    assert "## Training" in headings and "## Summary" in headings
    for absent in ("## Monitor during training", "## Evaluation", "## Embedding map", "## Notes"):
        assert absent not in headings
    assert {p.stem for p in paths.plots} == {"training"}
    assert paths.html.read_text().count("<img ") == 1
    # Only a config: a Summary-less report with a note, no plot, no traceback.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(dump_config(Config()))
    paths = write_report(bare)
    assert paths.plots == () and "<img " not in paths.html.read_text()
    assert _headings(paths.md.read_text()) == ["# selfsup report: ? / ?", "## Notes"]
    assert any("summary.json: missing" in n for n in paths.notes)


def test_damaged_files_are_noted_not_raised(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    linear = (run / "eval" / "linear.json").read_text()
    (run / "eval" / "linear.json").write_text(linear[: len(linear) // 2])  # cut off
    (run / "eval" / "cluster.json").write_text("[1, 2]")  # valid JSON, not an object
    (run / "eval" / "bad.json").write_bytes(b"\xff\xfe\x00garbage")
    knn = json.loads((run / "eval" / "knn.json").read_text())
    knn["confusion"] = [[1, 2, 3], [4, 5, 6]]  # not square
    (run / "eval" / "knn.json").write_text(json.dumps(knn))
    layer = json.loads((run / "eval" / "layer.json").read_text())
    layer["layer_weights"] = ["high", "low"]
    (run / "eval" / "layer.json").write_text(json.dumps(layer))
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 31, "kind": "train", "lo')  # torn by a kill
    paths = write_report(run)
    notes = "\n".join(paths.notes)
    assert "eval/linear.json: not valid JSON" in notes
    assert "eval/cluster.json: expected a JSON object, found list" in notes
    assert "eval/bad.json" in notes
    assert "plot confusion_knn.png could not be drawn (confusion must be a square" in notes
    assert "plot layer_weights.png could not be drawn" in notes
    assert "metrics.jsonl: 1 unreadable line(s) skipped: line 34 (a run stopped while writing" in notes
    assert {p.stem for p in paths.plots} == ALL_PLOTS - {
        "confusion_knn",
        "confusion_linear",
        "layer_weights",
    }
    markdown = paths.md.read_text()
    assert "## Notes" in _headings(markdown) and "### linear (eval/linear.json)" not in markdown
    assert "### knn (eval/knn.json)" in markdown and "| top1@20 | 91 |" in markdown  # the rest is kept
    assert "| 1 per class | 63.00" in markdown
    assert collect_run(run).train["loss"][-1][0] == 30  # the torn step is not half-read
    for plot in paths.plots:
        _png_ok(plot)


def test_not_a_run_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a selfsup run directory"):
        write_report(tmp_path / "empty")


def test_old_knn_json_without_metrics_is_read(tmp_path: Path) -> None:
    run = make_run(tmp_path, evals=False)
    _json(run / "eval" / "knn.json", {"train": "digits:train", "test": "digits:test", "knn_top1@20": 97.5})
    data = collect_run(run)
    assert data.evals["knn"]["metrics"] == {"knn_top1@20": 97.5}
    assert "| knn_top1@20 | 97.5 |" in write_report(run).md.read_text()


# --- several runs --------------------------------------------------------------------------------


def test_comparison_table_of_several_runs(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", knn_top1=91.0, wall_seconds=95.0, samples_per_s=1234.5)
    b = make_run(tmp_path / "b", evals=False, peak_memory_mb=None, wall_seconds=300.0, method="byol")
    c = make_run(tmp_path, "other", knn_top1=88.25, peak_memory_mb=20480.0, samples_per_s=99.0)
    for name in ("fewshot", "layer", "rankme", "embedding_map"):  # fewer plots to draw
        (a / "eval" / f"{name}.json").unlink()
        (c / "eval" / f"{name}.json").unlink()
    (c / "eval" / "linear.json").unlink()
    out = tmp_path / "report"
    paths = write_report([a, b, c], out=out)
    assert paths.md == (out / "report.md").resolve() and not (a / "report.md").exists()
    table = comparison_table([collect_run(a, "a/run"), collect_run(b, "b/run"), collect_run(c, "other")])
    assert table.headers == [
        "run",
        "method",
        "encoder",
        "steps",
        "kNN top-1",
        "linear top-1",
        "wall-clock",
        "peak memory",
        "samples/s",
    ]
    assert table.rows == [
        ["a/run", "simclr", "small_cnn", "30", "91.00", "93.50", "95.0 s", "812 MB", "1,234"],
        ["b/run", "byol", "small_cnn", "30", "90.00 †", "-", "5.0 min", "-", "1,234"],
        ["other", "simclr", "small_cnn", "30", "88.25", "-", "95.0 s", "20,480 MB", "99"],
    ]
    markdown = paths.md.read_text()
    assert "| a/run | simclr | small_cnn | 30 | 91.00 | 93.50 | 95.0 s | 812 MB | 1,234 |" in markdown
    headings = _headings(markdown)
    assert headings[:2] == ["# selfsup report: 3 runs", "## Comparison"]
    assert "## a/run: simclr / small_cnn on digits:train" in headings
    assert "### Training" in headings and "#### knn (eval/knn.json)" in headings
    # Per-run plots in subfolders, the comparison plots at the top.
    stems = {p.relative_to(out.resolve() / "plots").as_posix() for p in paths.plots}
    assert {"comparison_loss.png", "comparison_knn.png", "a-run/training.png", "b-run/monitor.png"} <= stems
    assert "other/confusion_knn.png" in stems and "b-run/confusion_knn.png" not in stems
    for plot in paths.plots:
        _png_ok(plot)
    assert paths.html.read_text().count("<img ") == len(paths.plots)


def test_the_same_run_twice_gets_distinct_names(tmp_path: Path) -> None:
    run = make_run(tmp_path, evals=False)
    paths = write_report([run, run], out=tmp_path / "r")
    headings = _headings(paths.md.read_text())
    assert "## run: simclr / small_cnn on digits:train" in headings
    assert "## run (2): simclr / small_cnn on digits:train" in headings
    assert len(set(paths.plots)) == len(paths.plots)


# --- a real run ----------------------------------------------------------------------------------


def test_report_of_a_real_tiny_run(tmp_path: Path) -> None:
    import selfsup

    selfsup.pretrain(
        data="digits:train",
        encoder="small_cnn",
        steps=2,
        out=tmp_path / "run",
        overrides=[
            "data.image_size=16",
            "train.batch_size=32",
            "train.log_every=1",
            "train.knn_every=2",
            "train.progress=false",
        ],
    )
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # not read by the report
    paths = write_report(tmp_path / "run")
    headings = _headings(paths.md.read_text())
    assert headings[:4] == [
        "# selfsup report: simclr / small_cnn on digits:train",
        "## Summary",
        "## Training",
        "## Monitor during training",
    ]
    assert {p.stem for p in paths.plots} == {"training", "monitor"} and paths.notes == ()
    for plot in paths.plots:
        _png_ok(plot)
    data = collect_run(tmp_path / "run")
    assert [s for s, _ in data.train["loss"]] == [1, 2]
    assert [s for s, _ in data.monitor["knn_top1@20"]] == [2]

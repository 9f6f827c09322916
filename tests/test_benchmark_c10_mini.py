"""The CPU-scale benchmark (c10_mini): its config encodes the paper's Table 3 rows, and its table
computes means, spreads and gaps from the runs' results.json files."""

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from r2b.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
if not (BENCH / "run_c10_mini.py").is_file():
    pytest.skip("no benchmarks/ folder next to the tests", allow_module_level=True)
sys.path.insert(0, str(BENCH))
import run_c10_mini  # noqa: E402


@pytest.mark.parametrize("pipeline", sorted(run_c10_mini.PIPELINES))
def test_pipeline_has_every_row_of_the_table_in_order(pipeline):
    config, rows, _ = run_c10_mini.PIPELINES[pipeline]
    cfg = load_config(config, ["data.root=/nonexistent"])
    names = [s.name for s in cfg.stages]
    for _, stages, _ in rows:
        assert all(name in names for name in stages)
        assert [names.index(n) for n in stages] == sorted(names.index(n) for n in stages)
    assert {s.model.stem for s in cfg.stages} == {"cifar"}
    assert {s.model.width for s in cfg.stages} == {0.25}
    base = {s.epochs for s in cfg.stages if not s.name.startswith(("sb15_", "sb2n_"))}
    assert len(base) == 1, "every stage gets the same epochs, but the rows that say otherwise"


def _row_epochs(cfg, stages: list[str]) -> list[int]:
    return [cfg.stage(n).epochs for n in stages]


def test_compute_matched_baseline_gets_real_to_bins_student_epochs():
    cfg = load_config(run_c10_mini.PIPELINES["table3"][0], ["data.root=/nonexistent"])
    r2b = _row_epochs(cfg, ["r2b_fp", "r2b_ban", "r2b_bnn"])
    sb15 = _row_epochs(cfg, ["sb15_ban", "sb15_bnn"])
    assert sum(sb15) == sum(r2b) > sum(_row_epochs(cfg, ["sb_ban", "sb_bnn"]))
    # as many epochs with real latent weights (fp + ban) and with binary ones (bnn) as Real-to-Bin
    assert sb15 == [r2b[0] + r2b[1], r2b[2]]
    assert cfg.stage("sb15_bnn").init_from == "sb15_ban" and cfg.stage("sb15_ban").teacher is None
    assert cfg.data.val_fraction > 0, "teachers and checkpoints are selected on validation data"


def test_converged_protocol_doubles_the_baselines_epochs():
    cfg = load_config(run_c10_mini.PIPELINES["converged"][0], ["data.root=/nonexistent"])
    sb, sb2n = _row_epochs(cfg, ["sb_ban", "sb_bnn"]), _row_epochs(cfg, ["sb2n_ban", "sb2n_bnn"])
    assert sb2n == [2 * e for e in sb]
    assert _row_epochs(cfg, ["r2b_fp", "r2b_ban", "r2b_bnn"]) == [sb[0]] * 3
    assert cfg.data.val_fraction > 0 and cfg.data.train_limit == 5000


def test_family_rows_follow_their_papers_two_steps():
    cfg = load_config(run_c10_mini.PIPELINES["families"][0], ["data.root=/nonexistent"])
    stage = cfg.stage
    # Bi-Real Net: real-valued pre-training of the same blocks, then fully binary, CE only
    assert [stage(n).model.stage for n in ("bireal_fp", "bireal_bnn")] == ["fp", "bnn"]
    assert stage("bireal_bnn").init_from == "bireal_fp"
    assert stage("bireal_bnn").teacher is None and stage("bireal_bnn").loss.kd == 0
    # ReActNet: binary activations, then binary weights; the distributional loss alone
    assert [stage(n).model.stage for n in ("react_ban", "react_bnn")] == ["ban", "bnn"]
    assert stage("react_bnn").init_from == "react_ban"
    for name in ("react_ban", "react_bnn"):
        s = stage(name)
        assert s.teacher == "teacher" and (s.loss.ce, s.loss.kd, s.loss.att) == (0.0, 1.0, 0.0)
    assert stage("react_ban").model.name == "reactnet_resnet18"
    assert stage("bireal_fp").model.name == "bireal_resnet18"


def test_rows_follow_the_paper_recipes():
    cfg = load_config(run_c10_mini.PIPELINES["table3"][0], ["data.root=/nonexistent"])
    stage = cfg.stage
    # the strong baseline is trained without any teacher; ban initialises bnn
    assert stage("sb_ban").teacher is None and stage("sb_bnn").teacher is None
    assert stage("sb_bnn").init_from == "sb_ban"
    # progressive teacher-student: every step is taught by, and starts from, the one before
    for prev, step in (("r2b_fp", "r2b_ban"), ("r2b_ban", "r2b_bnn"), ("pts_fp", "pts_ban")):
        assert stage(step).teacher == prev and stage(step).init_from == prev
    assert stage("r2b_fp").model.name == "r2b_resnet18"
    assert stage("pts_fp").model.name == "sb_resnet18"
    for name in ("akd_ban", "pts_fp", "r2b_fp", "r2b_ban"):
        assert stage(name).loss.att > 0 and stage(name).loss.kd > 0
    for name in ("sb_bnn", "akd_bnn", "pts_bnn", "r2b_bnn"):
        s = stage(name)
        assert s.model.stage == "bnn" and s.loss.att == 0 and s.optim.weight_decay == 0


def _write_runs(runs: Path, top1: dict[int, dict[str, float]]) -> None:
    for seed, accs in top1.items():
        stages = [
            {"name": name, "variant": _variant(name), "top1": acc, "top5": 99.0,
             "best_top1": acc, "seconds": 100.0}
            for name, acc in accs.items()
        ]  # fmt: skip
        (runs / f"seed{seed}").mkdir(parents=True)
        (runs / f"seed{seed}" / "results.json").write_text(
            json.dumps({"device": "cpu", "stages": stages})
        )


def _variant(name: str) -> str:
    return "real" if name == "teacher" else name.rsplit("_", 1)[1]


def test_table_reports_mean_spread_and_gaps(tmp_path):
    stages = [n for _, row, _ in run_c10_mini.ROWS for n in row]
    seed0 = {n: 50.0 for n in stages} | {"teacher": 70.0, "sb_bnn": 55.0, "r2b_bnn": 60.0}
    seed1 = {n: 50.0 for n in stages} | {"teacher": 72.0, "sb_bnn": 57.0, "r2b_bnn": 64.0}
    _write_runs(tmp_path, {0: seed0, 1: seed1})
    config = run_c10_mini.PIPELINES["table3"][0]
    args = Namespace(runs=tmp_path, seeds=[0, 1], command="python benchmarks/run_c10_mini.py",
                     config=config, rows=run_c10_mini.ROWS)  # fmt: skip
    result = run_c10_mini.collect(args)
    sb = next(r for r in result["rows"] if r["row"] == "strong baseline (SB)")
    assert sb["stages"][-1]["top1"] == [55.0, 57.0]
    table = run_c10_mini.markdown(result)
    assert "| 71.00 ± 1.00 (real) |" in table
    assert "| 56.00 ± 1.00 | -15.00 |" in table  # SB bnn and its gap to the real net
    assert "| 62.00 ± 2.00 | -9.00 |" in table  # Real-to-Bin bnn
    assert "**+6.00** points" in table
    assert "0.36 h, 0.36 h" in table  # 13 stages x 100 s per seed
    run_c10_mini.plot(result, tmp_path / "c10_mini.png")
    assert (tmp_path / "c10_mini.png").stat().st_size > 10_000

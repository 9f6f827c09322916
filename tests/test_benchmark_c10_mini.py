"""The CPU-scale benchmark (c10_mini): its config encodes the paper's Table 3 rows, and its table
computes means, spreads, gaps and margins from the runs' results.json files (written here in the
real format: ``StageResult`` records and the saved config), reporting the test top-1 of the
validation-selected checkpoint."""

import json
import sys
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import pytest

from r2b.train.config import dump_yaml, load_config
from r2b.train.progress import StageResult
from r2b.train.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
if not (BENCH / "run_c10_mini.py").is_file():
    pytest.skip("no benchmarks/ folder next to the tests", allow_module_level=True)
sys.path.insert(0, str(BENCH))
import run_c10_mini  # noqa: E402


@pytest.mark.parametrize("pipeline", sorted(run_c10_mini.PIPELINES))
def test_pipeline_has_every_row_of_the_table_in_order(pipeline):
    config, rows = run_c10_mini.PIPELINES[pipeline].config, run_c10_mini.PIPELINES[pipeline].rows
    cfg = load_config(config, ["data.root=/nonexistent"])
    names = [s.name for s in cfg.stages]
    for _, stages, _ in rows:
        assert all(name in names for name in stages)
        assert [names.index(n) for n in stages] == sorted(names.index(n) for n in stages)
    assert {s.model.stem for s in cfg.stages} == {"cifar"}
    assert {s.model.width for s in cfg.stages} == {0.25}
    trained = [s for s in cfg.stages if s.epochs]  # epochs 0: a copied checkpoint, evaluated
    base = {s.epochs for s in trained if not s.name.startswith(("sbcm_", "sb2n_"))}
    assert len(base) == 1, "every stage gets the same epochs, but the rows that say otherwise"


def _row_epochs(cfg, stages: list[str]) -> list[int]:
    return [cfg.stage(n).epochs for n in stages]


def test_compute_matched_baseline_gets_real_to_bins_student_epochs():
    cfg = load_config(run_c10_mini.PIPELINES["table3"].config, ["data.root=/nonexistent"])
    r2b = _row_epochs(cfg, ["r2b_fp", "r2b_ban", "r2b_bnn"])
    sbcm = _row_epochs(cfg, ["sbcm_ban", "sbcm_bnn"])
    assert sum(sbcm) == sum(r2b) > sum(_row_epochs(cfg, ["sb_ban", "sb_bnn"]))
    # as many epochs with real latent weights (fp + ban) and with binary ones (bnn) as Real-to-Bin
    assert sbcm == [r2b[0] + r2b[1], r2b[2]]
    assert cfg.stage("sbcm_bnn").init_from == "sbcm_ban" and cfg.stage("sbcm_ban").teacher is None
    assert cfg.data.val_fraction > 0, "teachers and checkpoints are selected on validation data"


def test_converged_protocol_doubles_the_baselines_epochs():
    cfg = load_config(run_c10_mini.PIPELINES["converged"].config, ["data.root=/nonexistent"])
    sb, sb2n = _row_epochs(cfg, ["sb_ban", "sb_bnn"]), _row_epochs(cfg, ["sb2n_ban", "sb2n_bnn"])
    assert sb2n == [2 * e for e in sb]
    assert _row_epochs(cfg, ["r2b_fp", "r2b_ban", "r2b_bnn"]) == [sb[0]] * 3
    assert cfg.data.val_fraction > 0 and cfg.data.train_limit == 3700


@pytest.mark.parametrize("val_images, converged", [(300, False), (3000, True)])
def test_converged_needs_a_validation_split_that_resolves_a_point(val_images, converged):
    stage = {"stage": "", "epochs": 1}
    rows = [
        {"row": "N", "stages": [stage | {"stage": "sb_bnn", "val_top1": [50.0, 51.0]}]},
        {"row": "2N", "stages": [stage | {"stage": "sb2n_bnn", "val_top1": [50.5, 50.0]}]},
    ]
    c = run_c10_mini._doubling(rows, ("sb_bnn", "sb2n_bnn"), val_images)
    assert c["mean_rise"] == -0.25 and c["seeds_half_range"] == 0.5
    # 100 sqrt(0.505 * 0.495 / n): 2.89 points on 300 images, 0.91 on 3,000
    assert c["val_standard_error"] == {300: 2.89, 3000: 0.91}[val_images]
    assert c["converged"] is converged and c["resolved"] is converged


def test_family_rows_follow_their_papers_two_steps():
    cfg = load_config(run_c10_mini.PIPELINES["families"].config, ["data.root=/nonexistent"])
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
    cfg = load_config(run_c10_mini.PIPELINES["table3"].config, ["data.root=/nonexistent"])
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


#: a stage's (validation top-1 of the selected epoch, test top-1 of that epoch, last epoch's test
#: top-1) when a test does not name it
OTHER = (49.5, 50.0, 49.0)


def _stage_record(stage, accs: tuple[float, float, float], val: bool) -> dict:
    """The stage's entry of results.json as the pipeline writes it (older runs: no val keys)."""
    v, best, last = accs
    record = StageResult(
        name=stage.name, model=stage.model.name, variant=stage.model.stage or "real",
        teacher=stage.teacher, init_from=stage.init_from, epochs=stage.epochs, top1=last,
        top5=99.0, best_top1=best, best_top5=98.0, best_epoch=stage.epochs - 1,
        best_val_top1=v if val else None, selected_on="val" if val else "test", seconds=100.0,
        dir=stage.name,
    ).to_json()  # fmt: skip
    if not val:  # results.json before the validation split
        del record["best_val_top1"], record["selected_on"]
    return record


def _write_runs(
    runs: Path, pipeline: str, accs: dict[int, dict], val: bool = True, unfinished: tuple = ()
) -> None:
    """Run folders of a finished ``pipeline`` per seed: config.yaml, results.json and each stage's
    result.json; ``accs[seed][stage]`` as ``OTHER``; the ``unfinished`` stages have no result
    yet (a stopped run)."""
    cfg = load_config(run_c10_mini.PIPELINES[pipeline].config, ["data.root=/data"])
    n_train = cfg.data.train_limit or 35000
    n_val = round(n_train * cfg.data.val_fraction) if val else 0
    for seed, stage_accs in accs.items():
        run = RunFolder(runs / f"seed{seed}")
        run.create()
        run.config.write_text(dump_yaml(cfg))
        records = [_stage_record(s, stage_accs.get(s.name, OTHER), val) for s in cfg.stages
                   if s.name not in unfinished]  # fmt: skip
        for record in records:
            run.stage(record["name"]).create()
            run.stage(record["name"]).result.write_text(json.dumps(record))
        data = {"name": "folder", "num_classes": 10, "train_images": n_train - n_val,
                "test_images": 10000} | ({"val_images": n_val} if val else {})  # fmt: skip
        results = {"name": cfg.name, "seed": seed, "data": data, "device": "cpu",
                   "stages": records} | ({"selection": "val"} if val else {})  # fmt: skip
        run.results.write_text(json.dumps(results))


def _collect(
    runs: Path, pipeline: str, trained_at: list[str] | None = None, partial: bool = False
) -> dict:
    pipe = run_c10_mini.PIPELINES[pipeline]
    args = Namespace(runs=runs, seeds=[0, 1], command="python benchmarks/run_c10_mini.py",
                     config=pipe.config, rows=pipe.rows, pipeline=pipeline,
                     trained_at=trained_at, partial=partial)  # fmt: skip
    return run_c10_mini.collect(args)


TABLE3 = {  # (val top-1, test top-1 of the selected epoch, last epoch's test top-1)
    0: {"teacher": (69.0, 70.0, 69.5), "sb_bnn": (54.0, 55.0, 54.0),
        "sbcm_bnn": (55.5, 56.0, 56.0), "r2b_bnn": (58.0, 60.0, 61.0)},
    1: {"teacher": (71.0, 72.0, 71.0), "sb_bnn": (56.0, 57.0, 57.5),
        "sbcm_bnn": (57.5, 59.0, 58.0), "r2b_bnn": (63.0, 64.0, 63.0)},
}  # fmt: skip


def test_table_reports_the_validation_selected_checkpoint_and_both_margins(tmp_path):
    _write_runs(tmp_path, "table3", TABLE3)
    result = _collect(tmp_path, "table3", trained_at=["b52bdeb" + "0" * 33])
    sb = next(r for r in result["rows"] if r["row"] == "strong baseline (SB)")["stages"][-1]
    assert sb["test_top1"] == [55.0, 57.0] and sb["val_top1"] == [54.0, 56.0]
    assert sb["last_top1"] == [54.0, 57.5] and sb["selected_epoch"] == [2, 2]
    assert sb["selected_on"] == "val" and result["selection"] == "val"
    assert result["trained_at"] == {"commits": ["b52bdeb" + "0" * 33], "source": "--trained-at"}
    assert len(result["load_average"]) == 3 and result["commit"] and result["machine"]
    assert result["protocol"]["val_images"] == 1000 and result["protocol"]["val_fraction"] == 0.1
    table = run_c10_mini.markdown(result)
    assert (
        "CIFAR-10, 1,000 images a class: 9,000 train / 1,000 validation / 10,000 test JPEGs "
        "(validation: 10% of each class's training images, fixed by the seed); ResNet-18, cifar "
        "stem, width 0.25, batch 128; 3 epochs a stage (SB, compute-matched (Real-to-Bin's "
        "student epochs): 6 + 3); seeds [0, 1]." in table
    )
    assert "is the epoch of best validation top-1; cells are the CIFAR-10 test top-1 %" in table
    assert "trained at commit b52bdeb000 · tables written at commit" in table
    assert "| real ResNet-18 | 71.00 ± 1.00 (real) | | | | 70.00 ± 1.00 | 78.3 |" in table
    assert (
        "| strong baseline (SB) |  | 50.00 ± 0.00 | 56.00 ± 1.00 | -15.00 | 55.00 ± 1.00 | "
        "72.1 → 69.6 |" in table
    )
    assert (
        "| SB, compute-matched (Real-to-Bin's student epochs) |  | 50.00 ± 0.00 | 57.50 ± 1.50 | "
        "-13.50 | 56.50 ± 1.00 | — |" in table
    )
    assert (
        "| Real-to-Bin | 50.00 ± 0.00 | 50.00 ± 0.00 | 62.00 ± 2.00 | -9.00 | 60.50 ± 2.50 | "
        "76.5 → 76.2 |" in table
    )
    assert (
        "- Real-to-Bin bnn − strong baseline (SB) bnn: **+6.00** points of test top-1 (seed 0: "
        "+5.00, seed 1: +7.00); on validation top-1 +5.50 (seed 0: +4.00, seed 1: +7.00)." in table
    )
    assert (
        "- Real-to-Bin bnn − SB, compute-matched (Real-to-Bin's student epochs) bnn: **+4.50** "
        "points of test top-1 "
        "(seed 0: +4.00, seed 1: +5.00); on validation top-1 +4.00 (seed 0: +2.50, seed 1: "
        "+5.50)." in table
    )
    assert [m["test_top1"] for m in result["margins"]] == [[5.0, 7.0], [4.0, 5.0]]
    assert "Converged?" not in table
    assert "0.36 h, 0.36 h" in table  # 13 stages x 100 s per seed
    run_c10_mini.plot(result, tmp_path / "c10_mini.png")
    assert (tmp_path / "c10_mini.png").stat().st_size > 10_000


def test_runs_without_a_validation_split_report_the_last_epoch_and_say_so(tmp_path):
    accs = {0: {"teacher": (0, 70.0, 68.0), "react_bnn": (0, 61.0, 60.0)},
            1: {"teacher": (0, 72.0, 67.0), "react_bnn": (0, 63.0, 61.0)}}  # fmt: skip
    _write_runs(tmp_path, "families", accs, val=False)
    result = _collect(tmp_path, "families")
    react = result["rows"][-1]["stages"][-1]
    assert react["test_top1"] == react["last_top1"] == [60.0, 61.0] and react["val_top1"] is None
    assert react["selected_on"] == "last epoch" and react["selected_epoch"] == [5, 5]
    table = run_c10_mini.markdown(result)
    assert "35,000 train / 10,000 test JPEGs, no validation split" in table
    assert "these runs have no validation split, so cells are the test top-1 % after" in table
    assert "| real ResNet-18 | 67.50 ± 0.50 (real) | | | | 78.3 |" in table
    assert "| ReActNet |  | 49.00 ± 0.00 | 60.50 ± 0.50 | -7.00 | — |" in table
    assert "val top-1" not in table and "Margins" not in table
    assert result["trained_at"]["source"].startswith("assumed")


def test_a_table_mixing_selection_rules_is_refused(tmp_path):
    _write_runs(tmp_path / "a", "table3", {0: {}})
    _write_runs(tmp_path / "b", "table3", {1: {}}, val=False)
    (tmp_path / "a" / "seed1").symlink_to(tmp_path / "b" / "seed1")
    with pytest.raises(SystemExit, match="some seeds were selected on validation, some not"):
        _collect(tmp_path / "a", "table3")


def _converged_accs(sb2n_val: tuple[float, float]) -> dict:
    return {
        seed: {"teacher": (60.0 + seed, 62.0 + seed, 61.0), "sb_bnn": (50.0 + seed, 52.0, 51.0),
               "sb2n_bnn": (sb2n_val[seed], 53.0 + seed, 52.0),
               "r2b_bnn": (55.0 + seed, 56.0 + 2 * seed, 55.0)}
        for seed in (0, 1)
    }  # fmt: skip


@pytest.mark.parametrize(
    "sb2n_val, verdict",
    [
        ((53.0, 55.0), "seed 0: 50.00 → 53.00 (+3.00), seed 1: 51.00 → 55.00 (+4.00); mean change "
         "+3.50, seeds' spread (the larger half-range of the two rows) 1.00. Doubling the epochs "
         "raised it by 3.50 points, more than the seeds' spread: NOT converged at 120 epochs a "
         "stage, so the margins above still include training time."),
        ((50.6, 51.2), "mean change +0.40, seeds' spread (the larger half-range of the two rows) "
         "0.50. Doubling the epochs raised it by 0.40 points, no more than the seeds' spread: no "
         "resolved gain, converged by this test at 120 epochs."),
        ((50.5, 50.0), "seed 0: 50.00 → 50.50 (+0.50), seed 1: 51.00 → 50.00 (-1.00); mean "
         "change -0.25, seeds' spread (the larger half-range of the two rows) 0.50. Doubling the "
         "epochs did not raise it on average (-0.25): converged by this test at 120 epochs a "
         "stage."),
    ],
)  # fmt: skip
def test_converged_table_compares_sb_at_n_and_2n_on_validation(tmp_path, sb2n_val, verdict):
    _write_runs(tmp_path, "converged", _converged_accs(sb2n_val))
    result = _collect(tmp_path, "converged")
    table = run_c10_mini.markdown(result)
    assert table.startswith(
        "Converged protocol (benchmarks/c10_mini/converged.yaml): CIFAR-10, 370 images a class: "
        "1,200 train / 2,500 validation / 10,000 test JPEGs (validation: 68% of each class's "
        "training images, fixed by the seed); ResNet-18, cifar stem, width 0.25, batch 32; 120 "
        "epochs a stage (strong baseline (SB), 2N epochs: 240 + 240); seeds [0, 1]."
    )
    lo, hi = sorted(sb2n_val)
    sb2n_cell = f"{(lo + hi) / 2:.2f} ± {(hi - lo) / 2:.2f}"
    assert (
        "| real ResNet-18 | real 120 | 60.50 ± 0.50 | 62.50 ± 0.50 |  | 78.3 |" in table
        and "| strong baseline (SB), N epochs | ban 120 → bnn 120 | 50.50 ± 0.50 | 52.00 ± 0.00 | "
        "-10.50 | 72.1 → 69.6 |"
        in table
        and f"| strong baseline (SB), 2N epochs | ban 240 → bnn 240 | {sb2n_cell} | 53.50 ± 0.50 | "
        "-9.00 | — |"
        in table
        and "| Real-to-Bin | fp 120 → ban 120 → bnn 120 | 55.50 ± 0.50 | 57.00 ± 1.00 | -5.50 | "
        "76.5 → 76.2 |"
        in table
    )
    assert (
        "- Real-to-Bin bnn − strong baseline (SB), N epochs bnn: **+5.00** points of test top-1 "
        "(seed 0: +4.00, seed 1: +6.00)"
        in table
        and "- Real-to-Bin bnn − strong baseline (SB), 2N epochs bnn: **+3.50** points of test "
        "top-1 (seed 0: +3.00, seed 1: +4.00)"
        in table
    )
    assert verdict in table
    assert result["converged"]["converged"] is ("NOT converged" not in verdict)


def test_trained_at_comes_from_the_sittings_that_trained_the_seeds(tmp_path):
    _write_runs(tmp_path, "table3", {0: {}, 1: {}})
    sittings = [{"commit": "a" * 40, "seeds": [0, 1]}, {"commit": "b" * 40, "seeds": [1]},
                {"commit": "c" * 40, "seeds": [7]}]  # fmt: skip
    (tmp_path / run_c10_mini.SITTINGS_FILE).write_text(json.dumps(sittings))
    trained = _collect(tmp_path, "table3")["trained_at"]
    assert trained["commits"] == ["a" * 40, "b" * 40]
    assert "trained at commit aaaaaaaaaa, bbbbbbbbbb ·" in run_c10_mini.markdown(
        _collect(tmp_path, "table3")
    )


def test_finished_seeds_are_not_trained_again_and_missing_stages_are_named(tmp_path):
    _write_runs(tmp_path, "table3", {0: {}, 1: {}})
    assert run_c10_mini.run_finished(tmp_path / "seed0")
    run_c10_mini.run_seeds(Namespace(seeds=[0, 1], runs=tmp_path), Path("/data"))
    assert not (tmp_path / run_c10_mini.SITTINGS_FILE).exists()  # nothing was started
    RunFolder(tmp_path / "seed1").stage("r2b_bnn").result.unlink()
    assert not run_c10_mini.run_finished(tmp_path / "seed1")
    results = RunFolder(tmp_path / "seed1").results
    record = json.loads(results.read_text())
    record["stages"] = record["stages"][:-1]
    results.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="seed 1 has not finished stage"):
        _collect(tmp_path, "table3")


def test_beta_sweep_trains_table3s_real_to_bin_stages_but_for_beta():
    """Every swept pair is pipeline.yaml's r2b_fp -> r2b_ban with only the attention weight
    changed, on the same data split, and one pair is the table's own beta."""
    sweep = load_config(run_c10_mini.PIPELINES["beta"].config, ["data.root=/nonexistent"])
    table = load_config(run_c10_mini.PIPELINES["table3"].config, ["data.root=/nonexistent"])
    for key in ("train_limit", "val_fraction"):
        assert getattr(sweep.data, key) == getattr(table.data, key)
    assert sweep.seed == table.seed == 0 and sweep.stage("teacher").epochs == 0
    betas = []
    for _, (fp, ban), _ in run_c10_mini.PIPELINES["beta"].rows[1:]:
        for name, ref in ((fp, "r2b_fp"), (ban, "r2b_ban")):
            swept, own = sweep.stage(name), table.stage(ref)
            assert replace(swept, name=ref, teacher=own.teacher, init_from=own.init_from,
                           loss=replace(swept.loss, att=own.loss.att)) == own  # fmt: skip
        assert sweep.stage(fp).loss.att == sweep.stage(ban).loss.att
        betas.append(sweep.stage(fp).loss.att)
    assert table.stage("r2b_fp").loss.att in betas and len(set(betas)) == len(betas) >= 3


def test_train_command_starts_a_seed_or_resumes_it_with_this_calls_overrides(tmp_path):
    extra = ["runtime.num_threads=1", "data.test_every_epoch=false"]
    new = run_c10_mini.train_command(3, tmp_path / "seed3", Path("/data"), extra)
    assert new[new.index("--config") + 1] == str(run_c10_mini.PIPELINES["table3"].config)
    assert [new[i + 1] for i, a in enumerate(new) if a == "--set"] == [
        "seed=3", "data.root=/data", *extra,
    ]  # fmt: skip
    RunFolder(tmp_path / "seed3").create()
    RunFolder(tmp_path / "seed3").config.write_text("name: x\n")
    resumed = run_c10_mini.train_command(3, tmp_path / "seed3", Path("/data"), extra)
    assert resumed[resumed.index("--resume") :] == [
        "--resume",
        "--set",
        extra[0],
        "--set",
        extra[1],
    ]


def test_beta_sweep_chooses_on_validation_not_on_test(tmp_path):
    """β = 3 has the best validation top-1 and β = 1 the best test top-1: β = 3 is chosen."""
    accs = {  # (val top-1, test top-1 of the selected epoch, last epoch's test top-1)
        seed: {"ban_beta0p3": (50.0, 50.0, 50.0), "ban_beta1": (51.0 + seed, 60.0, 60.0),
               "ban_beta3": (53.0, 52.0, 52.0)}
        for seed in (0, 1)
    }  # fmt: skip
    _write_runs(tmp_path, "beta", accs)
    result = _collect(tmp_path, "beta")
    assert result["chosen"] == {
        "rows": ["Real-to-Bin fp → ban, β = 3"], "stage": "ban", "val_top1": 53.0,
        "candidates": {"Real-to-Bin fp → ban, β = 0.3": 50.0, "Real-to-Bin fp → ban, β = 1": 51.5,
                       "Real-to-Bin fp → ban, β = 3": 53.0},
    }  # fmt: skip
    assert "Selected on validation: **Real-to-Bin fp → ban, β = 3** (the best mean" in (
        run_c10_mini.markdown(result)
    )
    accs[0]["ban_beta1"] = accs[1]["ban_beta1"] = (53.0, 60.0, 60.0)  # now a tie with β = 3
    _write_runs(tmp_path / "tie", "beta", accs)
    tie = _collect(tmp_path / "tie", "beta")
    assert tie["chosen"]["rows"] == ["Real-to-Bin fp → ban, β = 1", "Real-to-Bin fp → ban, β = 3"]
    assert "Tied on validation: **Real-to-Bin fp → ban, β = 1** and **" in (
        run_c10_mini.markdown(tie)
    )


def test_a_sitting_records_the_seeds_it_started_with(tmp_path):
    """run_seeds pops the pending seeds off its list as it starts them: the record keeps them."""
    pending = [0, 1]
    sitting = run_c10_mini.Sitting(tmp_path, pending)
    pending.clear()
    sitting.save()
    (record,) = json.loads((tmp_path / run_c10_mini.SITTINGS_FILE).read_text())
    assert record["seeds"] == [0, 1] and record["commit"]


#: A stopped converged run: the strong-baseline rows (trained first) have finished, the real
#: teacher and Real-to-Bin have not.
_NOT_YET = ("teacher", "r2b_fp", "r2b_ban", "r2b_bnn")


def test_a_stopped_run_is_refused_without_partial(tmp_path):
    _write_runs(tmp_path, "converged", _converged_accs((53.0, 55.0)), unfinished=_NOT_YET)
    with pytest.raises(SystemExit, match=r"seed 0 has not finished stage\(s\) teacher .*--partial"):
        _collect(tmp_path, "converged")


def test_partial_tables_hold_the_finished_rows_and_their_converged_test(tmp_path):
    _write_runs(tmp_path, "converged", _converged_accs((53.0, 55.0)), unfinished=_NOT_YET)
    result = _collect(tmp_path, "converged", partial=True)
    assert [r["row"] for r in result["rows"]] == [
        "strong baseline (SB), N epochs",
        "strong baseline (SB), 2N epochs",
    ]
    assert result["unfinished_rows"] == ["real ResNet-18", "Real-to-Bin"]
    assert result["margins"] == []  # both margins are of Real-to-Bin
    assert result["converged"]["rise"] == [3.0, 4.0] and not result["converged"]["converged"]
    table = run_c10_mini.markdown(result)
    assert (
        "| strong baseline (SB), N epochs | ban 120 → bnn 120 | 50.50 ± 0.50 | 52.00 ± 0.00 "
        "|  | 72.1 → 69.6 |" in table
    )  # no real row: no gap to it
    assert (
        "Partial: the runs have not finished these rows yet, so they are not in the table: "
        "real ResNet-18; Real-to-Bin." in table
    )
    assert "NOT converged at 120 epochs a stage" in table and "Margins" not in table


def test_partial_converged_table_keeps_its_layout_without_the_2n_row(tmp_path):
    _write_runs(tmp_path, "converged", _converged_accs((53.0, 55.0)),
                unfinished=_NOT_YET + ("sb2n_ban", "sb2n_bnn"))  # fmt: skip
    result = _collect(tmp_path, "converged", partial=True)
    table = run_c10_mini.markdown(result)
    assert result["converged"] is None and "Converged?" not in table
    assert "| row | stages (epochs) | val top-1 (final) |" in table
    assert "| strong baseline (SB), N epochs | ban 120 → bnn 120 | 50.50 ± 0.50 |" in table


def test_partial_needs_at_least_one_finished_row(tmp_path):
    cfg = load_config(run_c10_mini.PIPELINES["converged"].config, ["data.root=/data"])
    _write_runs(tmp_path, "converged", _converged_accs((53.0, 55.0)),
                unfinished=tuple(s.name for s in cfg.stages))  # fmt: skip
    with pytest.raises(SystemExit, match="no row has finished in every seed"):
        _collect(tmp_path, "converged", partial=True)

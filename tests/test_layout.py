"""The test suite mirrors the package (tests/README.md, docs/design.md "Tests").

Convention, flat: the tests of ``src/r2b/<package>/<module>.py`` are in
``tests/test_<package>_<module>.py``, those of ``src/r2b/<module>.py`` in
``tests/test_<module>.py``, and a package's own code (``<package>/__init__.py``) in
``tests/test_<package>.py``. A source module without its own test module is listed in
``TESTED_THROUGH`` with the test modules that cover it and why; a test module that tests no
single source module is listed in ``CROSS_CUTTING``.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src" / "r2b"

#: Source modules (relative to src/r2b) tested through other modules' tests: module -> those tests.
TESTED_THROUGH = {
    # re-exports and docstrings only: every test imports through them
    "__init__.py": ("test_cli.py",),
    "data/__init__.py": ("test_data_folder.py", "test_data_augment.py", "test_data_loader.py"),
    "models/__init__.py": ("test_models_registry.py",),
    "packed/__init__.py": ("test_packed_engine.py", "test_packed_fileformat.py"),
    "train/__init__.py": ("test_train_pipeline.py",),
    # the shared model flags and the one-line errors: a row each in the table of bad inputs
    "cli_args.py": ("test_bad_inputs.py",),
    "errors.py": ("test_bad_inputs.py", "test_faults.py"),
    # build_dataset dispatches to the dataset kinds, each tested with its own module
    "data/datasets.py": ("test_data_cifar.py", "test_data_folder.py", "test_data_default.py"),
    # the in-memory dataset is what a small folder (and the default data) is read into
    "data/memory.py": ("test_data_folder.py", "test_data_default.py"),
    # a training run's limits and validation split, end to end
    "data/run_splits.py": ("test_train_pipeline.py",),
    # the seeds of every random stream: reproducible epochs and augmentations
    "data/seeds.py": ("test_data_loader.py", "test_data_augment.py"),
    # normalisation constants, read by the datasets
    "data/stats.py": ("test_data_folder.py",),
    # LCE's interpreter in its own venv, which only the interpreter checks can run
    "lce/_worker.py": ("test_lce_check.py",),
    "lce/runtime.py": ("test_lce_check.py",),
    # the network description is tested through each of its consumers
    "models/spec.py": ("test_packed_engine.py", "test_openvino.py", "test_lce.py"),
    # `r2b bench` of a packed model, from the command line
    "packed/bench.py": ("test_packed_cli.py",),
    # the int8 float layers' calibration images (test_packed_int8.py is edited elsewhere now)
    "packed/calibration.py": ("test_packed_int8.py",),
    # `r2b eval` runs the evaluator
    "train/evaluate.py": ("test_train_cli.py",),
    # what stops a stage: a non-finite loss (test_faults.py), a stop signal (test_train_loop.py)
    "train/guard.py": ("test_faults.py", "test_train_loop.py"),
    # a live lock refused, a dead one taken over
    "train/lock.py": ("test_faults.py",),
    # devices, precision and processes: bf16 and torchrun runs of the pipeline
    "train/runtime.py": ("test_train_pipeline.py",),
}

#: Test modules that test no single source module: test module -> what they test.
CROSS_CUTTING = {
    "test_bad_inputs.py": "every bad input of every `r2b` command, one table row each",
    "test_faults.py": "the faults a training run must survive (NaN loss, full disk, locks)",
    "test_layout.py": "this file: the suite's layout",
    # edited elsewhere now; by the convention it would be tests/test_benchmarks_run_c10_mini.py
    "test_benchmark_c10_mini.py": "benchmarks/run_c10_mini.py, outside the package",
}


def expected_test_module(module: Path) -> str:
    """The test module of a source module (a path relative to src/r2b) under the convention."""
    parts = list(module.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "test_" + "_".join(parts) + ".py"


def source_modules() -> list[Path]:
    return sorted(p.relative_to(SRC) for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_source_module_has_its_test_module_or_says_which_tests_cover_it():
    missing = [
        m.as_posix()
        for m in source_modules()
        if m.as_posix() not in TESTED_THROUGH and not (TESTS / expected_test_module(m)).is_file()
    ]
    assert not missing, (
        f"no tests/test_<package>_<module>.py for {missing}: add one, or list the module in "
        "TESTED_THROUGH with the tests that cover it"
    )


def test_the_allow_list_is_current():
    modules = {m.as_posix() for m in source_modules()}
    for module, tests in TESTED_THROUGH.items():
        assert module in modules, f"{module} is listed in TESTED_THROUGH but not in src/r2b"
        own = expected_test_module(Path(module))
        assert module == "__init__.py" or not (TESTS / own).is_file(), f"{module} has {own}"
        assert all((TESTS / t).is_file() for t in tests), f"{module}: a test of {tests} is gone"


def test_every_test_module_tests_a_source_module():
    expected = {expected_test_module(m) for m in source_modules() if m.as_posix() != "__init__.py"}
    stray = [
        p.name
        for p in sorted(TESTS.glob("test_*.py"))
        if p.name not in expected and p.name not in CROSS_CUTTING
    ]
    assert not stray, f"{stray} test no source module by name: rename, or list in CROSS_CUTTING"

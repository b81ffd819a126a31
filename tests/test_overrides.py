"""``kd-ray sweep CONFIG --set KEY=VALUE`` (issue 11, item 2): overrides validated by the config's
schema, named in every error, and part of the effective config the sweep plans, saves and
resumes. The sweep that saves an overridden config.yaml and resumes it is in test_progress.py
(its one Ray run); here: units, and the CLI's --dry-run (no Ray)."""

from __future__ import annotations

import pytest
import yaml
from _sweep_helpers import TINY, run_cli, user_error_line, write_config

from kd_ray.cli import _resume_command, build_parser, main
from kd_ray.config import dump_config, parse_config
from kd_ray.errors import ConfigError
from kd_ray.overrides import apply_overrides, load_config_with_overrides, parse_override
from kd_ray.plan import plan_sweep


def _cfg(**extra):
    return parse_config({**TINY, **extra})


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("student.train.lr=0.05", "student.train.lr", 0.05),
        ("grid.seeds=[0,1,2]", "grid.seeds", [0, 1, 2]),
        ("runtime.bf16=true", "runtime.bf16", True),
        ("grid.losses=[kd]", "grid.losses", ["kd"]),
        ("name=other", "name", "other"),
        ("distill={alpha: 0.5}", "distill", {"alpha": 0.5}),
        ("resources.trials_per_run=", "resources.trials_per_run", None),
        ("datasets.0.root=/data/a=b", "datasets.0.root", "/data/a=b"),  # the first '=' splits
    ],
)
def test_values_are_read_as_yaml(text, key, value):
    override = parse_override(text)
    assert (override.key, override.value) == (key, value)


def test_overrides_change_the_validated_config_and_its_plan():
    cfg = apply_overrides(_cfg(), ["student.train.lr=0.01", "grid.seeds=[0,1,2]", "datasets.0.label=syn"])
    assert cfg.student.train.lr == 0.01 and cfg.grid.seeds == (0, 1, 2)
    assert cfg.datasets[0].key == "syn" and cfg.datasets[0].num_train == 64  # the rest of the item kept
    plan = plan_sweep(cfg, check_names=False)
    assert len(plan.trials) == 3 * len(plan_sweep(_cfg(), check_names=False).trials)
    assert all(t.trial_id.startswith("syn-") for t in plan.trials)
    # What the sweep saves as config.yaml is the effective config.
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["student"]["train"]["lr"] == 0.01 and saved["grid"]["seeds"] == [0, 1, 2]


def test_a_field_absent_from_the_file_keeps_its_sections_defaults():
    # The file has no student section: student.train defaults to 200 epochs with milestones, where a
    # bare TrainConfig has 10. Setting the lr must not drop those defaults.
    raw = {k: v for k, v in TINY.items() if k != "student"}
    cfg = apply_overrides(parse_config(raw), ["student.train.lr=0.05"])
    default = parse_config(raw).student.train
    assert cfg.student.train.lr == 0.05
    assert (cfg.student.train.epochs, cfg.student.train.schedule) == (default.epochs, default.schedule)
    # A mapping value merges into its section for the same reason.
    merged = apply_overrides(parse_config(raw), ["student.train={lr: 0.05, momentum: 0.5}"])
    assert merged.student.train.epochs == default.epochs and merged.student.train.momentum == 0.5


def test_later_overrides_win_and_no_overrides_is_the_same_config():
    cfg = _cfg()
    assert apply_overrides(cfg, []) is cfg
    assert apply_overrides(cfg, ["student.train.lr=0.2", "student.train.lr=0.3"]).student.train.lr == 0.3


def test_credentials_in_the_results_uri_survive_an_override():
    # The dump that overrides are applied to redacts them; the effective config must still hold them.
    cfg = _cfg(results="s3://KEY:SECRET@bucket/runs")
    assert apply_overrides(cfg, ["name=b"]).results == "s3://KEY:SECRET@bucket/runs"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["student.train.lr"], "--set 'student.train.lr': expected KEY=VALUE"),
        (["student..lr=1"], "is not a dotted key"),
        (["grid.seeds=[0,1"], "--set grid.seeds: the value '[0,1' is not a YAML value"),
        (["student.trian.lr=1"], "sweep.yaml with --set student.trian.lr=1: student.trian: unknown key"),
        (["student.train.lrr=1"], "with --set student.train.lrr=1: student.train.lrr: unknown key"),
        (
            ["student.train.lr=-1"],
            "with --set student.train.lr=-1: student.train.lr: Input should be greater than 0",
        ),
        (
            ["grid.seeds=[0,0]", "name=x"],
            "with --set grid.seeds=[0,0]: grid.seeds: has repeated values [0, 0]",
        ),
        (["grid.seeds=zero"], "with --set grid.seeds=zero: grid.seeds: Input should be a valid tuple"),
        (["datasets.1.root=/x"], "--set datasets.1.root: datasets is a list of 1 item(s); index it by 0..0"),
        (["datasets.name=x"], "--set datasets.name: datasets is a list of 1 item(s)"),
        (["name.x=1"], "--set name.x: name is a value ('tiny'), not a section"),
        # Valid alone, wrong together: both are named.
        (
            ["resources.num_workers=3", "student.train.epochs=2"],
            "with --set resources.num_workers=3 --set student.train.epochs=2: (top level): "
            "student.train.batch_size 32 must be a multiple of the 3 workers",
        ),
    ],
)
def test_a_bad_override_is_one_line_naming_its_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        apply_overrides(_cfg(), overrides, source="sweep.yaml")
    message = str(err.value)
    assert expected in message and "\n" not in message, message


def test_load_config_with_overrides_reads_the_file(tmp_path):
    path = write_config(tmp_path)
    assert load_config_with_overrides(path).student.train.lr == TINY["student"]["train"]["lr"]
    assert load_config_with_overrides(path, ["student.train.lr=0.5"]).student.train.lr == 0.5
    with pytest.raises(ConfigError, match=f"{path} with --set student.train.lr=0"):
        load_config_with_overrides(path, ["student.train.lr=0"])


def test_the_resume_hint_repeats_the_overrides():
    # Ctrl-C names the command that continues the sweep: without its --set, --resume would refuse
    # (the saved config is the effective one).
    args = build_parser().parse_args(
        ["sweep", "c.yaml", "--set", "grid.seeds=[0, 1]", "--set", "student.train.lr=0.05", "--results", "r"]
    )
    assert _resume_command(args) == (
        "kd-ray sweep c.yaml --set 'grid.seeds=[0, 1]' --set student.train.lr=0.05 --results r --resume"
    )


def test_a_bad_override_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    config = write_config(tmp_path)
    code = main(
        ["sweep", str(config), "--dry-run", "--set", "grid.seeds=[0,1]", "--set", "student.train.lr=fast"]
    )
    line = user_error_line(capsys.readouterr().err)
    assert code == 2
    assert "--set student.train.lr=fast: student.train.lr: Input should be a valid number" in line, line


@pytest.mark.slow
def test_dry_run_plans_the_overridden_config(tmp_path):
    config = write_config(tmp_path)
    done = run_cli(
        "sweep",
        str(config),
        "--dry-run",
        "--set",
        "grid.seeds=[0,1,2]",
        "--set",
        "grid.losses=[kd, zscore_kd]",
    )
    assert done.returncode == 0, done.stderr
    # TINY plans 2 teachers and 4 trials for one seed and one loss.
    assert done.stdout.strip().splitlines()[-1] == "6 teachers, 24 student trials", done.stdout

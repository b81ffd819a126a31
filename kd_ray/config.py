"""The sweep config: one YAML file → one frozen, validated :class:`SweepConfig`.

Experiments are data (``experiments/*.yaml``). The file is read with ``yaml.safe_load`` and
validated by pydantic models that forbid unknown keys, so a typo is an error naming its field,
never a silently ignored setting. Defaults follow the paper's Appendix A: τ = 10, α = 0.2,
SGD with lr 0.1 and momentum 0.9, batch 128, step LR with warm-up. The text does not state a
warm-up length or weight decay; the defaults (1 epoch, 5e-4) are common choices, and the paper
configs under ``experiments/`` set the authors' code's values (8 epochs, none) explicitly. Names of datasets, models,
augmentations, losses and views are checked against their registries when the sweep is planned
(:func:`kd_ray.plan.plan_sweep`), so the error lists the names that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from kd_ray.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Alpha = Annotated[float, Field(ge=0, le=1)]
# Seeds are stored in int64 Parquet columns; numpy's legacy seeding (scikit-learn's
# ``random_state``, used to split some datasets) takes only 32-bit seeds.
Seed = Annotated[int, Field(ge=0, lt=2**63)]
SplitSeed = Annotated[int, Field(ge=0, lt=2**32)]
# Teachers per student trial (1..3); kd_ray.metrics.names sizes its per-teacher metrics by it.
MAX_TEACHERS = 3

# A name that becomes part of a file or directory name under the results directory.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNSAFE_LABEL = re.compile(r"[/\\\x00-\x1f\x7f]")


def _check_label(label: str) -> str:
    """A dataset label names teacher files and Parquet files: it must be one safe path part.

    It must start with a letter or digit (``.``/``_`` files are hidden from pandas and pyarrow,
    and ``..`` would leave the results directory) and hold no ``/``, ``\\`` or control character.
    """
    if not label or not label[0].isascii() or not label[0].isalnum() or _UNSAFE_LABEL.search(label):
        raise ValueError(
            f"{label!r} is not a safe file name: it must start with a letter or digit and contain "
            "no '/', '\\' or control characters (it names files under the results directory)"
        )
    return label


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DatasetConfig(_Strict):
    """One dataset of the sweep; each builder reads the fields it needs."""

    name: str
    label: str | None = Field(None, description="name in results and plots; defaults to `name`")
    root: str | None = Field(None, description="data directory (cifar100*, imagenet*)")
    imbalance: PositiveFloat | None = Field(
        None, description="*_lt: n_max / n_min; default 100 (CIFAR) or 10 (digits, ImageNet-LT)"
    )
    image_size: PositiveInt | None = Field(
        None, description="training resolution; None keeps the native size"
    )
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    split_seed: SplitSeed = Field(0, description="seed of the train/validation split; 0 <= seed < 2^32")
    download: bool = False
    verify_checksums: bool = Field(
        True,
        description="cifar100: False reads an extracted `cifar-100-python` dir without torchvision's MD5 check",
    )
    train_split: str | None = Field(
        None, description="imagenet_lt: split file of the training images; imagenet: train folder name"
    )
    val_split: str | None = Field(
        None, description="imagenet_lt: split file of the validation images; imagenet: val folder name"
    )
    num_classes: PositiveInt | None = Field(None, description="synthetic: classes")
    num_train: PositiveInt | None = Field(None, description="synthetic: training images")
    num_val: PositiveInt | None = Field(None, description="synthetic: validation images")

    @field_validator("label")
    @classmethod
    def _safe_label(cls, v: str | None) -> str | None:
        return v if v is None else _check_label(v)

    @property
    def key(self) -> str:
        """The dataset's name in trial ids, Parquet and plots."""
        return self.label or self.name


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped once per epoch.

    ``step``: linear warm-up over ``warmup_epochs``, then the lr is multiplied by ``gamma`` at
    each of ``milestones`` (the paper's lambda scheduler). ``cosine``: annealing to ``eta_min``
    over ``t_max`` epochs (default: all epochs). ``constant``: no change.
    """

    kind: Literal["step", "cosine", "constant"] = "step"
    milestones: tuple[PositiveInt, ...] = ()
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegInt = 0
    t_max: PositiveInt | None = None
    eta_min: Annotated[float, Field(ge=0)] = 0.0


class TrainConfig(_Strict):
    """Optimisation of one model (SGD, Appendix A)."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    schedule: ScheduleConfig = ScheduleConfig()


class TeacherConfig(_Strict):
    arch: str = "resnet50"
    pretrained: bool | str = Field(
        False,
        description="initialise from torchvision's ImageNet weights: true, or a weights name like IMAGENET1K_V1",
    )
    train: TrainConfig = TrainConfig(
        epochs=60, schedule=ScheduleConfig(milestones=(25, 40, 60), warmup_epochs=1)
    )


class StudentConfig(_Strict):
    arch: str = "resnet18"
    train: TrainConfig = TrainConfig(
        epochs=200, schedule=ScheduleConfig(milestones=(190, 195), warmup_epochs=1)
    )


class DistillConfig(_Strict):
    temperature: PositiveFloat = Field(10.0, description="KD temperature τ (grid.temperatures sweeps it)")
    alpha: Alpha = Field(0.2, description="weight α of the hard-label term (grid.alphas sweeps it)")


# The KD hyper-parameters a grid may sweep: grid field -> (the scalar setting it replaces, the
# trial's attribute and trials column). Absent from a config, an axis is that single value and
# stays out of trial ids and dumped configs, so every existing sweep keeps its ids and resumes.
KD_AXES: dict[str, tuple[str, str]] = {
    "temperatures": ("distill.temperature", "temperature"),
    "alphas": ("distill.alpha", "alpha"),
    "student_lrs": ("student.train.lr", "lr"),
}


class GridConfig(_Strict):
    """The axes of the student grid (datasets are listed at the top level).

    ``temperatures``, ``alphas`` and ``student_lrs`` sweep KD's own hyper-parameters: a list
    here replaces the single value of ``distill.temperature``, ``distill.alpha`` or
    ``student.train.lr``, and each value becomes part of the trial id. Teachers do not depend on
    them, so every value of an axis distils from the same teachers.
    """

    teacher_counts: tuple[Annotated[int, Field(ge=1, le=MAX_TEACHERS)], ...] = (1, 2, 3)
    losses: tuple[str, ...] = ("kd", "zscore_kd")
    views: tuple[str, ...] = ("full",)
    seeds: tuple[Seed, ...] = Field((0,), description="0 <= seed < 2^63")
    permutations: tuple[str, ...] | None = Field(None, description="e.g. ['T1s_T2w_Ss']; default: all")
    temperatures: tuple[PositiveFloat, ...] | None = Field(
        None, description="KD temperatures τ to sweep; default: distill.temperature alone"
    )
    alphas: tuple[Alpha, ...] | None = Field(
        None, description="hard-label weights α to sweep, each in [0, 1]; default: distill.alpha alone"
    )
    student_lrs: tuple[PositiveFloat, ...] | None = Field(
        None, description="student base learning rates to sweep; default: student.train.lr alone"
    )

    @field_validator("teacher_counts", "losses", "views", "seeds", "permutations", *KD_AXES)
    @classmethod
    def _non_empty_unique(cls, v: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if v is None:  # permutations: all of them; a KD axis: its single config value
            return v
        if not v:
            raise ValueError("must list at least one value")
        if len(set(v)) != len(v):
            raise ValueError(f"has repeated values {list(v)}")
        return v

    @model_serializer(mode="wrap")
    def _omit_unswept_axes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An axis left unset is dumped as nothing, not as null: the saved config.yaml of an
        # existing sweep must compare equal on --resume, and it has no such keys.
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in KD_AXES and v is None)}


class MetricsConfig(_Strict):
    ece_bins: Annotated[int, Field(ge=2)] = 15
    iou_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.4
    cam_target: Literal["predicted", "label", "sum"] = "predicted"


class ResourcesConfig(_Strict):
    """How trials map onto the cluster."""

    num_workers: PositiveInt = Field(1, description="Ray Train DDP workers per student trial")
    teacher_workers: PositiveInt = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="default: as many runs as the cluster fits now, read again as it changes"
    )
    trials_per_run: PositiveInt | None = Field(
        None,
        description="student trials sharing a data stream trained by one Ray Train run (each batch "
        "augmented once, each teacher run once); default: all of them; 1: one run per trial",
    )
    report_interval_s: PositiveFloat = Field(
        0.2, description="Ray Train controller poll interval (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)"
    )
    node_wait_s: Annotated[float, Field(ge=0)] = Field(
        600.0,
        description="on a cluster joined through RAY_ADDRESS, which may add nodes (autoscaling): how "
        "long to wait for nodes that can hold a run's workers before giving up; 0: give up at once. "
        "The private local cluster never waits: a request it cannot fit fails at once",
    )


class RuntimeConfig(_Strict):
    """Per-worker speed switches; the defaults are right for CPU and safe on GPU."""

    bf16: bool = Field(False, description="bf16 autocast (CUDA)")
    channels_last: bool = False
    compile: bool = False
    loader_workers: NonNegInt = 0
    pin_memory: bool = False
    torch_threads: PositiveInt | None = Field(
        None, description="intra-op threads per worker; default: its CPUs"
    )


class FailureConfig(_Strict):
    worker_max_failures: NonNegInt = Field(1, description="Ray Train restarts of a trial's workers")
    # A lost node takes a run's Train controller with it (it lives beside the Tune function), which
    # Ray Train's own retries cannot recover; one Tune re-run resumes from the epoch checkpoint.
    trial_max_failures: NonNegInt = Field(
        1, description="Ray Tune re-runs of a failed trial (resumes from its last epoch checkpoint)"
    )


class MlflowTrackerConfig(_Strict):
    """MLflow: one run per student trial and per teacher, in one experiment (docs/trackers.md)."""

    uri: str | None = Field(
        None,
        description="tracking URI: a directory or file:// (a file store), sqlite:///..., http(s)://SERVER; "
        "default: RESULTS/NAME/mlruns",
    )
    experiment: str | None = Field(None, description="experiment name; default: the sweep's name")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        # The config is saved and travels into Tune's params: no secret in it.
        from kd_ray.storage import has_credentials

        if v is not None and has_credentials(v):
            raise ValueError(
                "credentials in the tracking URI would be saved with the config; give them to MLflow "
                "through MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            )
        return v


class TensorBoardTrackerConfig(_Strict):
    """TensorBoard: event files of one run per student trial and per teacher (docs/trackers.md)."""

    logdir: str | None = Field(
        None, description="local directory of the runs; default: RESULTS/NAME/tensorboard"
    )


class WandbTrackerConfig(_Strict):
    """Weights & Biases: one run per student trial and per teacher (docs/trackers.md)."""

    project: str | None = Field(None, description="W&B project; default: the sweep's name")
    entity: str | None = Field(None, description="W&B team or user; default: W&B's own default")
    mode: Literal["online", "offline"] | None = Field(
        None, description="online, or offline (sync later with `wandb sync`); default: W&B's (WANDB_MODE)"
    )
    dir: str | None = Field(None, description="local directory of W&B's files; default: RESULTS/NAME")


# The trackers a sweep can log to: keys of `trackers`, values of `kd-ray sweep --tracker`, and
# the names of the extras that install them (kd_ray.trackers.PACKAGES).
TRACKER_NAMES: tuple[str, ...] = ("mlflow", "tensorboard", "wandb")


class TrackersConfig(_Strict):
    """Experiment trackers the driver logs every trial and teacher to (docs/trackers.md).

    A tracker is on when its section is present (``trackers: {mlflow: {}}``); a list of names
    (``trackers: [mlflow, tensorboard]``) turns them on with their defaults. The Parquet tables
    stay the record of a sweep: a tracker that fails is switched off with one warning.
    """

    mlflow: MlflowTrackerConfig | None = None
    tensorboard: TensorBoardTrackerConfig | None = None
    wandb: WandbTrackerConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            unknown = [n for n in data if n not in TRACKER_NAMES]
            if unknown:
                raise ValueError(f"unknown tracker {unknown[0]!r}; known: {', '.join(TRACKER_NAMES)}")
            return dict.fromkeys(data, {})
        return data

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(n for n in TRACKER_NAMES if getattr(self, n) is not None)

    @model_serializer(mode="wrap")
    def _omit_off(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ReportConfig(_Strict):
    """The HTML report (README.md#how-a-sweep-runs): besides the final one, a partial report while
    a sweep runs, so its verdicts can be watched forming (kd_ray.orchestration.live_report)."""

    every_minutes: PositiveFloat | None = Field(
        30.0,
        description="while a sweep with local results runs, rewrite RESULTS/NAME/report.html this "
        "often, marked 'partial: N of M trials finished'; null: only the final report "
        "(--no-report: none at all)",
    )

    @field_validator("every_minutes", mode="before")
    @classmethod
    def _say_how_to_turn_off(cls, v: Any) -> Any:
        # 0 reads like "off" to many users; say what off is rather than only "greater than 0".
        if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0:
            raise ValueError(f"must be greater than 0 minutes, got {v}; null turns partial reports off")
        return v


class SweepConfig(_Strict):
    """A whole sweep, as written in ``experiments/NAME.yaml``."""

    name: str = Field(
        description="the sweep's directory under the results directory: letters, digits, '_', '.', "
        "'-', starting with a letter or digit"
    )
    datasets: tuple[DatasetConfig, ...]
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    grid: GridConfig = GridConfig()
    metrics: MetricsConfig = MetricsConfig()
    resources: ResourcesConfig = ResourcesConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    failure: FailureConfig = FailureConfig()
    trackers: TrackersConfig | None = Field(
        None, description="experiment trackers (MLflow, TensorBoard, W&B); default: none (docs/trackers.md)"
    )
    report: ReportConfig = ReportConfig()
    results: str = Field(
        "results",
        description="results directory or URI (overridden by --results); credentials in it "
        "(s3://KEY:SECRET@...) are used but never saved or printed",
    )

    def dataset(self, key: str) -> DatasetConfig:
        """The entry of ``datasets`` whose key (label, else name) is ``key``: what a trial's or a
        teacher's ``dataset`` names.

        Raises:
            ConfigError: no dataset has that key (a trial planned from another config).
        """
        for dataset in self.datasets:
            if dataset.key == key:
                return dataset
        known = ", ".join(d.key for d in self.datasets)
        raise ConfigError(f"no dataset {key!r} in this config's datasets ({known})")

    @field_serializer("results")
    def _no_credentials(self, v: str) -> str:
        # A dumped config travels into Tune's params and the saved config.yaml.
        from kd_ray.storage import redact

        return redact(v)

    @model_serializer(mode="wrap")
    def _omit_unset_sections(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # No trackers is dumped as nothing, not as null: the saved config.yaml of a sweep without
        # them stays as it was before trackers existed.
        data = handler(self)
        if data.get("trackers") is None:
            data.pop("trackers", None)
        # Likewise default report settings: a sweep started before the section existed resumes.
        if self.report == ReportConfig():
            data.pop("report", None)
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # Not "..", not "_teachers" (the teacher store beside the sweeps), not a hidden directory.
        if not _SAFE_NAME.match(v):
            raise ValueError(
                f"{v!r} is not a safe directory name: use letters, digits, '_', '.' and '-', "
                "starting with a letter or digit"
            )
        return v

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, v: tuple[DatasetConfig, ...]) -> tuple[DatasetConfig, ...]:
        from kd_ray.results.store import _file_name  # how a label becomes part of a file name

        if not v:
            raise ValueError("must list at least one dataset")
        keys = [d.key for d in v]
        if len(set(keys)) != len(keys):
            raise ValueError(f"dataset labels must be unique, got {keys} (set `label`)")
        # Unique as files too: results files replace unsafe characters, and some filesystems
        # (macOS, Windows) ignore case.
        seen: dict[str, str] = {}
        for key in keys:
            stored = _file_name(key).casefold()
            if stored in seen:
                raise ValueError(
                    f"dataset labels {seen[stored]!r} and {key!r} name the same result files "
                    f"({_file_name(key)!r}: characters other than letters, digits, '_', '.' and '-' "
                    "become '_', and case is ignored); make the labels differ"
                )
            seen[stored] = key
        return v

    @model_validator(mode="after")
    def _batches_shard_evenly(self) -> SweepConfig:
        for role, train, workers in (
            ("student", self.student.train, self.resources.num_workers),
            ("teacher", self.teacher.train, self.resources.teacher_workers),
        ):
            if train.batch_size % workers:
                raise ValueError(
                    f"{role}.train.batch_size {train.batch_size} must be a multiple of the "
                    f"{workers} workers, so every DDP step averages equal shards"
                )
        return self


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {field}: {msg}{extra}"


def parse_config(data: Any, source: str = "config") -> SweepConfig:
    """Validate a mapping (e.g. from YAML) into a :class:`SweepConfig`.

    Raises:
        ConfigError: one line naming the first wrong field and what was expected.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML file (``yaml.safe_load`` only: no executable tags)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {raw[err.start]:#04x} at line {line}); save the config as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    return parse_config(data, source=str(path))


def dump_config(cfg: SweepConfig) -> str:
    """The resolved config as YAML, saved next to the results so a sweep can be rerun exactly."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

"""What ``distill-train`` accepts: dataclass schemas of its config, checked right after composition.

Hydra composes the YAML groups; ``validate_train_config`` then walks the result against
``TrainConfig`` before anything is built, so an unknown key (a typo, or a ``+key=`` addition), a
value of the wrong type or out of range, or an incompatible combination fails in the first
second with a ``ConfigError`` that names the key and what it accepts.

A check after composition rather than schemas merged into Hydra's composition: Hydra would reject
the same mistakes, but with messages that do not list the valid keys, and every group file would
have to name its schema. Groups whose contents belong to one implementation are open (typed
``dict``): ``method.objective`` (each method's constructor checks its own arguments), the
optimizer, ``teacher`` and ``student``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from distill.core.grids import GRIDS
from distill.core.lr_schedule import LR_SCHEDULES
from distill.core.samplers import SAMPLERS
from distill.data.datamodule import DATASET_NAMES, DataModule
from distill.data.toy2d import TOY2D_NAMES
from distill.errors import ConfigError
from distill.lit.sharding import check_strategy


def positive(**kw: Any) -> Any:
    return field(metadata={"min": 1}, **kw)


def choice(options, **kw: Any) -> Any:
    return field(metadata={"choices": tuple(options)}, **kw)


DATASET_LIMITS = {
    "name": {"choices": DATASET_NAMES},
    "channels": {"choices": (1, 3)},
    "resolution": {"min": 1},
    "num_train": {"min": 1},
    "repeats": {"min": 1},
    "sample_steps": {"min": 1},
}


def dataset_schema() -> type:
    """The dataset group: ``DataModule``'s own arguments, so a new dataset option needs no second
    declaration here (the network ``distill-pretrain`` builds is ``conf/net/<dataset>.yaml``)."""
    hints, fields = typing.get_type_hints(DataModule.__init__), []
    for name, p in inspect.signature(DataModule.__init__).parameters.items():
        if name in ("self", "batch_size", "num_workers", "seed"):  # from train, hardware and seed
            continue
        default = {} if p.default is p.empty else {"default": p.default}
        fields.append((name, hints[name], field(metadata=DATASET_LIMITS.get(name, {}), **default)))
    return dataclasses.make_dataclass("DatasetSchema", fields, kw_only=True)


DatasetSchema = dataset_schema()


@dataclass(kw_only=True)
class MethodSchema:
    name: str
    objective: dict  # _target_ plus the method's own arguments, checked by its constructor
    optimizer: dict
    ema_decays: list[float] = field(metadata={"min": 0.0, "below": 1.0})
    grad_clip: float = field(metadata={"min": 0.0})
    continues: str | None = None  # the method config whose finished run init_from must hold (TCM: ect)
    student_nfes: list[int] | None = positive(default=None)  # eval.student_nfes unless set there


@dataclass(kw_only=True)
class HardwareSchema:
    accelerator: str = choice(("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
    devices: int | str | list[int] = 1
    num_nodes: int = field(default=1, metadata={"min": 1})
    strategy: str | dict = "auto"  # a Lightning strategy name, or one to instantiate (_target_: FSDP's)
    precision: str = choice(
        (
            "64-true",
            "32-true",
            "16-true",
            "bf16-true",
            "16-mixed",
            "bf16-mixed",
            "transformer-engine",
            "transformer-engine-float16",
        )
    )
    num_workers: int = field(default=0, metadata={"min": 0})
    plugins: list[dict] = field(default_factory=list)  # Lightning plugins, each with a _target_
    compile: bool = False
    activation_checkpointing: bool = False
    channels_last: bool = False


@dataclass(kw_only=True)
class LoggerSchema:
    kind: str = choice(("wandb", "csv", "tensorboard"))
    project: str = "distill"
    entity: str | None = None
    offline: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class EvalSchema:
    metric: str | None = choice((None, "fd_digits", "fd_fmnist", "sw", "fid"))
    num_samples: int = positive()
    num_reference: int = positive()
    batch_size: int = positive()
    seed: int = 0
    teacher: bool = True
    teacher_samplers: list[str] = choice(SAMPLERS)
    teacher_nfes: list[int] = positive()
    teacher_grid: str = choice(GRIDS)
    student_nfes: list[int] = positive()
    every_n_steps: int = field(default=0, metadata={"min": 0})
    inception_weights: str | None = None
    reference_stats: str | None = None
    flow_map_error: bool = False
    save_arrays: bool = False


@dataclass(kw_only=True)
class PathsSchema:
    cache: str
    models: str | None = None  # downloaded checkpoints that paper configs name (EDM pickles)
    output_dir: str | None = None


@dataclass(kw_only=True)
class TrainSchema:
    batch_size: int = positive()
    max_steps: int = positive()
    log_every_n_steps: int = positive()
    checkpoint_every: int = positive()
    max_bad_steps: int = positive()
    fast_dev_run: bool | int = False
    global_batch_size: int | None = positive(default=None)
    images: int | None = positive(default=None)
    max_device_batch: int | None = positive(default=None)
    lr_warmup_steps: int = field(default=0, metadata={"min": 0})
    lr_schedule: str = choice(LR_SCHEDULES, default="constant")
    lr_decay_steps: int | None = positive(default=None)


@dataclass(kw_only=True)
class TrainConfig:
    dataset: DatasetSchema
    teacher: dict  # kind plus its own keys (build_teacher checks them)
    student: dict  # init plus its own keys (build_student checks them)
    method: MethodSchema
    hardware: HardwareSchema
    logger: LoggerSchema
    eval: EvalSchema
    paths: PathsSchema
    train: TrainSchema
    seed: int = 0
    progress: bool = True
    run_name: str = ""
    table_label: str = ""
    init_from: str | None = None
    init_from_ema: bool = True
    after: str | None = None
    ckpt_path: str | None = "auto"


TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    type(None): "null",
    list: "a list",
    dict: "a group of keys",
}


def _name(kind: Any) -> str:
    return TYPE_NAMES.get(typing.get_origin(kind) or kind, str(kind))


def type_error(key: str, value: Any, kind: Any) -> str | None:
    """Why ``value`` is not a ``kind`` (a type hint), or None when it is."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        errors = [type_error(key, value, a) for a in args]
        return None if None in errors else f"{key}={value!r} must be {' or '.join(_name(a) for a in args)}"
    if origin is list or kind is list:
        if not isinstance(value, list):
            return f"{key}={value!r} must be {_name(list)}"
        errors = (type_error(f"{key}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value))
        return next((e for e in errors if e), None)
    if kind is dict:
        return None if isinstance(value, dict) else f"{key}={value!r} must be {_name(dict)}"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, bool) and kind is not bool:  # bool is an int to Python, never to a config
        return f"{key}={value!r} must be {_name(kind)}"
    return None if isinstance(value, kind) else f"{key}={value!r} must be {_name(kind)}"


def range_error(key: str, value: Any, meta: dict[str, Any]) -> str | None:
    """Why ``value`` (or each element of a list) breaks the field's ``min``/``below``/``choices``."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if "choices" in meta and v not in meta["choices"]:
            return f"{key}={v!r} is not a valid choice; choose one of {', '.join(map(str, meta['choices']))}"
        if v is None or isinstance(v, str):
            continue
        if "min" in meta and v < meta["min"]:
            return f"{key}={v!r} must be >= {meta['min']}"
        if "below" in meta and v >= meta["below"]:
            return f"{key}={v!r} must be < {meta['below']}"
    return None


def plain(node: DictConfig, key: str, where: str) -> Any:
    """``node[key]`` resolved to plain Python (lists, dicts), with resolution errors naming the key."""
    if OmegaConf.is_missing(node, key):
        raise ConfigError(f"{where} is required but not set (???): pass {where}=<value>")
    try:
        value = node[key]
    except (InterpolationResolutionError, MissingMandatoryValue) as err:
        raise ConfigError(f"{where} cannot be resolved: {err}") from err
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def check_node(node: DictConfig, schema: type, where: str = "", ignore: tuple[str, ...] = ()) -> None:
    """Raise ``ConfigError`` for the first key of ``node`` that ``schema`` does not allow."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    group = f"{where.rstrip('.')} takes" if where else "the top level takes"
    for key in node:
        if key not in fields and key not in ignore:
            raise ConfigError(f"unknown config key {where}{key}: {group} {', '.join(fields)}")
    for name, f in fields.items():
        key = f"{where}{name}"
        if name not in node.keys():  # (``in node`` is False for a ??? value)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key} is missing: {group} {', '.join(fields)}")
            continue
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(node[name], DictConfig):
                raise ConfigError(f"{key} must be a group of keys, not {node[name]!r}")
            check_node(node[name], hints[name], f"{key}.")
            continue
        value, meta = plain(node, name, key), dict(f.metadata)
        # Out of the choices is said first: naming them says more than naming the type.
        problem = range_error(key, value, meta) if "choices" in meta else None
        problem = problem or type_error(key, value, hints[name]) or range_error(key, value, meta)
        if problem:
            raise ConfigError(problem)


def check_combinations(cfg: DictConfig) -> None:
    """Settings that are each valid but cannot work together."""
    metric, dataset = cfg.eval.metric, cfg.dataset.name
    if metric == "fd_digits" and dataset != "digits":
        raise ConfigError(
            f"eval.metric=fd_digits scores 8x8 digits, not dataset={dataset}: use eval.metric=sw "
            "(or fid on images), or leave eval.metric=null for the dataset's own metric"
        )
    if metric == "fd_fmnist" and dataset != "fashion_mnist":
        raise ConfigError(
            f"eval.metric=fd_fmnist scores Fashion-MNIST images, not dataset={dataset}: use the "
            "dataset's own metric (eval.metric=null)"
        )
    if metric == "fid" and dataset in TOY2D_NAMES:
        raise ConfigError(f"eval.metric=fid needs images, and dataset={dataset} is 2-D points: use eval.metric=sw")
    if cfg.teacher.get("kind") == "gmm_exact" and cfg.student.get("init") == "teacher":
        raise ConfigError("teacher=gmm_exact has no network for student=copy_of_teacher to copy: use student=mlp")
    check_strategy(cfg.hardware.strategy)
    check_lr_schedule(cfg.train)


def check_lr_schedule(train: DictConfig) -> None:
    """``train.lr_schedule`` other than constant needs its ``train.lr_decay_steps``."""
    schedule, decay = train.get("lr_schedule", "constant"), train.get("lr_decay_steps")
    warmup = train.get("lr_warmup_steps", 0)
    if schedule == "inverse_sqrt" and decay is None:
        raise ConfigError(
            "train.lr_schedule=inverse_sqrt needs train.lr_decay_steps: the step from which the lr "
            "falls as 1/sqrt(step / lr_decay_steps) (e.g. 35000 for FastGen's sCD ImageNet-64)"
        )
    if schedule == "linear_decay" and (decay is None or decay <= warmup):
        raise ConfigError(
            f"train.lr_schedule=linear_decay needs train.lr_decay_steps (the step where the lr reaches "
            f"0) above train.lr_warmup_steps={warmup}, not {decay}: e.g. "
            "train.lr_decay_steps=${train.max_steps}"
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Check a composed ``distill-train`` config (Hydra's own ``hydra`` node aside)."""
    check_node(cfg, TrainConfig, ignore=("hydra",))
    for key in ("objective", "optimizer"):
        if "_target_" not in cfg.method[key]:
            raise ConfigError(f"method.{key} needs a _target_ (the class or function it builds)")
    check_combinations(cfg)

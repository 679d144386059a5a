"""Facts about a resolved job config: what is a choice, its digest, its flat params, its run name."""

from __future__ import annotations

import hashlib
import numbers
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

# Top-level keys that change where results go, how much is printed or how a job starts or
# stops, not what is trained: left out of the config hash (resume matches on it) and the run name.
# `trial` is the Optuna trial a search's sweeper gave the job; `local` a machine's own settings
# (conf/local/: their values are in the config and its hash, the group's name is not a choice).
NOT_CHOICES = ("tracking", "verbose", "resume", "max_minutes", "trial", "local", "fail_fast")


def conf_dir() -> Path:
    """The config folder: conf/ beside the package in a checkout (an editable install included), else
    the copy a wheel installs inside the package (fer_exp/conf, pyproject.toml's package-dir)."""
    source = Path(__file__).resolve().parents[1] / "conf"
    return source if (source / "config.yaml").is_file() else Path(str(resources.files("fer_exp") / "conf"))


def model_names() -> list[str]:
    """The architectures conf/model/ describes, one config each (fer_exp.models.MODELS builds them)."""
    return sorted(path.stem for path in (conf_dir() / "model").glob("*.yaml"))


# Options a config group holds that `--help` does not offer: parts of other options (a name starting
# with "_"), a template to copy, and old names kept for a while (they still work, with a warning).
UNLISTED_OPTIONS = {"augment": ("seed",), "local": ("example",)}


def listed_groups() -> str:
    """The config groups and their options, as Hydra's --help lists them ($APP_CONFIG_GROUPS), minus
    UNLISTED_OPTIONS and internal parts; conf/config.yaml's help template calls it (${fer_exp_groups:})."""
    lines = []
    for group in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra"):
        hidden = UNLISTED_OPTIONS.get(group.name, ())
        options = sorted(f.stem for f in group.glob("*.yaml") if not f.stem.startswith("_") and f.stem not in hidden)
        if options:
            lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("fer_exp_groups", listed_groups, replace=True)


def is_choice(override: str) -> bool:
    """Whether a command-line override (`lr=1e-3`, `tracking.dir=x`, `+foo=1`) changes what is trained."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(".", 1)[0].split("/", 1)[0] not in NOT_CHOICES


def override_values(overrides: list[str]) -> dict[str, str]:
    """{key: value} of Hydra overrides, as Hydra's own parser reads them: a string unescaped (a sweep's job
    gets `data.root=/data/my\\ faces` and this gives `/data/my faces`), anything else as written
    (`lr=1e-3`, `model.filters=[8,16]`), `~seed` as ""."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        written = o.input_line.partition("=")[2]
        value = None if o.value_type is None or o.is_sweep_override() else o.value()
        values[o.key_or_group] = value if isinstance(value, str) else written
    return values


def run_name(overrides: list[str] | tuple) -> str:
    """A job's name from its overrides, e.g. "model=deep,lr=0.001"; "defaults" when none is a choice."""
    return ",".join(o for o in overrides if is_choice(o)) or "defaults"


def choices(params: dict, drop: tuple[str, ...] = ()) -> dict:
    """The flat params (`model.name`, `lr`, ...) that decide a result (see NOT_CHOICES), minus the keys in `drop`."""
    return {k: v for k, v in params.items() if k.split(".", 1)[0] not in NOT_CHOICES and k not in drop}


def config_hash(cfg: dict) -> str:
    """A digest of what determines the result: the resolved config minus NOT_CHOICES (and minus distill
    without a teacher, so that a config's hash is what it was before distillation existed)."""
    off = ("teacher", "distill") if cfg.get("teacher") is None else ()
    text = OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in cfg.items() if k not in NOT_CHOICES + off}))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# key: (is it acceptable, what it must be). Checked before any work starts (fer_exp.run), so that a
# typo such as lr=abc fails at once, naming the key, not inside Keras after the data has loaded.
CHECKS = {
    "model.name": (lambda v: v in model_names(), f"one of {', '.join(model_names())} (the configs in conf/model/)"),
    "lr": (lambda v: _number(v) and v > 0, "a number > 0, e.g. lr=1e-3"),
    "batch_size": (lambda v: _whole(v) and v >= 1, "a whole number >= 1, e.g. batch_size=64"),
    "epochs": (lambda v: _whole(v) and v >= 1, "a whole number >= 1, e.g. epochs=30"),
    "seed": (_whole, "a whole number"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "warmup_epochs": (lambda v: _number(v) and v >= 0, "a number of epochs >= 0"),
    "label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "tta_views": (lambda v: _whole(v) and 1 <= v <= 10, "a whole number from 1 to 10"),
    "max_minutes": (lambda v: v is None or (_number(v) and v > 0), "null or a number of minutes > 0"),
    "optimizer": (lambda v: v in ("adam", "adamw", "sgd"), "one of adam, adamw, sgd"),
    "lr_schedule": (lambda v: v in ("constant", "cosine"), "one of constant, cosine"),
    "precision": (
        lambda v: v in ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
        "one of auto, float32, mixed_bfloat16, mixed_float16",
    ),
    "threads": (lambda v: v is None or (_whole(v) and v >= 1), "null or a whole number of threads >= 1"),
    "keep_weights": (lambda v: v in ("best", "last"), "one of best, last"),
    "class_weight": (lambda v: v in ("none", "balanced"), "one of none, balanced"),
    "early_stopping.patience": (lambda v: _whole(v) and v >= 0, "a whole number of epochs >= 0 (0: off)"),
    "tracking.outage_minutes": (lambda v: _number(v) and v >= 0, "a number of minutes >= 0"),
    "teacher": (
        lambda v: v is None or isinstance(v, (str, int)) or (isinstance(v, ListConfig) and len(v) > 0),
        "null, a run id, runs:/<id>/model, models:/<name>@<alias>, a .h5 path, or a list [<a>,<b>]",
    ),
    "distill.alpha": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "distill.temperature": (lambda v: _number(v) and v > 0, "a number > 0, e.g. 4"),
    "distill.views": (lambda v: v == "online" or _whole(v) and 1 <= v <= 10, "a whole number from 1 to 10, or online"),
    "data.image_size": (lambda v: _whole(v) and v >= 16, "a whole number of pixels >= 16"),
    "data.limit_per_class": (lambda v: v is None or (_whole(v) and v >= 1), "null or a whole number >= 1"),
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key in CHECKS whose value is of the wrong type or out of range."""
    for key, (ok, expected) in CHECKS.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is not valid: expected {expected}")

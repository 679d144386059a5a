"""Facts about a resolved job config: what is a choice, its digest, its flat params, its run name."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

# Top-level keys that change where results go, how much is printed or how a job starts or
# stops, not what is trained: left out of the config hash (resume matches on it) and the run name.
# `trial` is the Optuna trial a search's sweeper gave the job.
NOT_CHOICES = ("tracking", "verbose", "resume", "max_minutes", "trial")


def is_choice(override: str) -> bool:
    """Whether a command-line override (`lr=1e-3`, `tracking.dir=x`, `+foo=1`) changes what is trained."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(".", 1)[0].split("/", 1)[0] not in NOT_CHOICES


def run_name(overrides: list[str] | tuple) -> str:
    """A job's name from its overrides, e.g. "model=deep,lr=0.001"; "defaults" when none is a choice."""
    return ",".join(o for o in overrides if is_choice(o)) or "defaults"


def config_hash(cfg: dict) -> str:
    """A digest of what determines the result: the resolved config minus NOT_CHOICES."""
    text = OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in cfg.items() if k not in NOT_CHOICES}))
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

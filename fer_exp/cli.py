"""The command-line convention of the `python -m fer_exp.<tool>` commands: Hydra-style key=value,
as the runner takes them; --help prints the tool's description and every key with its default."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def usage(doc: str, defaults: dict) -> str:
    keys = "\n".join(f"  {k}={'null' if v is None else v}" for k, v in defaults.items())
    return f"{doc.strip()}\n\nkeys (default):\n{keys}"


def parse(argv: list[str] | None, defaults: dict, doc: str, required: tuple[str, ...] = ()) -> DictConfig:
    """key=value arguments over `defaults`. --help prints the usage and exits 0; an unknown or missing
    key, or an argument that is not key=value, prints the usage and what is wrong and exits 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage(doc, defaults))
        raise SystemExit(0)
    problem = None
    try:
        args = OmegaConf.merge(defaults, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as e:
        args, problem = None, f"arguments are key=value: {e}".splitlines()[0]
    if args is not None:
        if unknown := sorted(set(args) - set(defaults)):
            problem = f"unknown key(s): {', '.join(unknown)}"
        elif missing := [k for k in required if args.get(k) in (None, "")]:
            problem = f"{' and '.join(f'{k}=' for k in missing)} required"
    if problem:
        print(f"{usage(doc, defaults)}\n\nerror: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args


def store_uri(args: DictConfig) -> str | None:
    """The MLflow store that args.tracking_uri / args.tracking_dir name; None, with a line on stderr saying
    what to do, when it is a local store that does not exist yet."""
    from fer_exp import tracking

    uri = tracking.resolve_uri(args.tracking_uri, args.tracking_dir)
    if problem := tracking.missing_store(uri):
        print(f"error: {problem}", file=sys.stderr)
        return None
    return uri

"""The command-line convention of every fer_exp command: Hydra-style key=value with the runner's own
names (`tracking.dir=`, `tracking.uri=`, `tracking.experiment=`); --help prints the command's
description and every key with its default and meaning; --version prints fer_exp's version. And
`fer-exp <command> ...`, the console script, which runs `python -m fer_exp.<command> ...`."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

COMMANDS = {
    "run": "train one config or sweep many (Hydra: -m, key=value, --help)",
    "compare": "a sweep's jobs, best first: table, plot, MLflow UI link",
    "story": "an experiment's tuning story on one page",
    "ensemble": "average a sweep's best models into one, as a run",
    "evaluate": "a model's accuracy, report and confusion matrix on a folder",
    "predict": "find faces in photos and videos and label their expressions",
    "reproduce": "re-run a recorded run and say whether it reproduced",
    "sync": "upload the runs a tracking-server outage left in spool folders",
}
# Where results are read from, as fer_exp.run names it; each command takes the keys it needs.
TRACKING = {
    "tracking.uri": (None, "a tracking server or store URI (default: MLFLOW_TRACKING_URI, else tracking.dir)"),
    "tracking.dir": ("mlruns", "the local MLflow store: a folder with mlflow.db and artifacts/"),
}
EXPERIMENT = {"tracking.experiment": ("fer_exp", "the MLflow experiment, as fer_exp.run's tracking.experiment=")}
ALIASES = {"tracking_uri": "tracking.uri", "tracking_dir": "tracking.dir"}  # the names before tracking.*


def fer_exp_version() -> str:
    try:
        return version("fer_exp")
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


def usage(doc: str, keys: dict[str, tuple]) -> str:
    pairs = [(f"{k}={'null' if default is None else default}", meaning) for k, (default, meaning) in keys.items()]
    width = max(len(pair) for pair, _ in pairs)
    lines = "\n".join(f"  {pair.ljust(width)}  {meaning}" for pair, meaning in pairs)
    return f"{doc.strip()}\n\nkeys (key=default  meaning):\n{lines}\n\n--help this text, --version fer_exp's version"


def _problem(argv: list[str], keys: dict[str, tuple]) -> str | None:
    for arg in argv:
        key = ALIASES.get(arg.split("=", 1)[0], arg.split("=", 1)[0])
        if "=" not in arg:
            return f"arguments are key=value; got {arg!r}"
        if key == "experiment" and "tracking.experiment" in keys:
            return (
                "experiment= is a config preset of fer_exp.run (experiment=fast); "
                "the MLflow experiment to read is tracking.experiment=NAME"
            )
        if key not in keys:
            return f"unknown key(s): {key}"
    return None


def nest(flat: dict) -> dict:
    """{"tracking.dir": x, "top_k": 5} -> {"tracking": {"dir": x}, "top_k": 5}."""
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def parse(argv: list[str] | None, keys: dict[str, tuple], doc: str, required: tuple[str, ...] = ()) -> DictConfig:
    """key=value arguments over `keys` ({key: (default, meaning)}); dotted keys nest (args.tracking.dir).
    --help prints the usage and exits 0, --version the version; an unknown or missing key, or an argument
    that is not key=value, prints the usage and what is wrong and exits 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage(doc, keys))
        raise SystemExit(0)
    if "--version" in argv:
        print(f"fer_exp {fer_exp_version()}")
        raise SystemExit(0)
    args = None
    if not (problem := _problem(argv, keys)):
        given = [f"{ALIASES.get(k, k)}={v}" for k, v in (a.split("=", 1) for a in argv)]
        try:
            args = OmegaConf.merge(nest({k: d for k, (d, _) in keys.items()}), OmegaConf.from_dotlist(given))
        except OmegaConfBaseException as e:
            problem = f"arguments are key=value: {e}".splitlines()[0]
    if args is not None and (missing := [k for k in required if OmegaConf.select(args, k) in (None, "")]):
        problem = f"{' and '.join(f'{k}=' for k in missing)} required"
    if problem:
        print(f"{usage(doc, keys)}\n\nerror: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return args


def as_flags(argv: list[str], flags: dict[str, str]) -> list[str]:
    """key=value arguments as the argparse flags of a command that has flags (reproduce, predict):
    `tracking.dir=x` -> `--tracking-dir=x`, `checkout=true` -> `--checkout`, a key whose flag is "" ->
    its value as a positional argument; other arguments unchanged."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        flag = flags.get(ALIASES.get(key, key)) if eq and not arg.startswith("-") else None
        if flag is None:
            out.append(arg)
        elif flag == "":  # a positional argument given as key=value (reproduce's run=)
            out.append(value)
        elif value.lower() in ("true", "false") and flag in BOOLEAN_FLAGS:
            out += [flag] if value.lower() == "true" else []
        else:
            out.append(f"{flag}={value}")
    return out


BOOLEAN_FLAGS = {"--checkout", "--force", "--no-detect"}


def progress() -> int:
    """Keras's predict verbosity for a command's long predictions: a bar on a terminal, a line in a log."""
    return 1 if sys.stderr.isatty() else 2


def store_uri(args: DictConfig) -> str | None:
    """The MLflow store that args.tracking.uri / args.tracking.dir name; None, with a line on stderr saying
    what to do, when it is a local store that does not exist yet."""
    from fer_exp import tracking

    uri = tracking.resolve_uri(args.tracking.uri, args.tracking.dir)
    if problem := tracking.missing_store(uri):
        print(f"error: {problem}", file=sys.stderr)
        return None
    return uri


def main(argv: list[str] | None = None) -> int:
    """fer-exp COMMAND [key=value ...]: the console script; `fer-exp run ...` is `python -m fer_exp.run ...`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        listing = "\n".join(f"  {name:<10} {what}" for name, what in COMMANDS.items())
        print(f"usage: fer-exp COMMAND [key=value ...] [--help]\n\ncommands:\n{listing}\n\n--version fer_exp's version")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"fer_exp {fer_exp_version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fer-exp: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    sys.argv = [f"fer-exp {command}", *rest]  # what the command (Hydra, argparse) and provenance read
    module = importlib.import_module(f"fer_exp.{command}")
    if command == "run":
        module.command()  # a Hydra app: reads sys.argv
        return 0
    return module.main(rest) or 0

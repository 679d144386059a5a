"""Upload the runs that a tracking-server outage left in spool folders (see tracking/outbox.py).

    python -m fer_exp.sync [spool=mlruns/spool] [tracking.uri=http://...]

spool= is a spool folder (mlruns/spool/<run id>) or the folder that holds them. Each run's
records go, in order, to the same run on the server it was on (or tracking.uri, or
MLFLOW_TRACKING_URI), which then ends as the job did (FINISHED, FAILED, KILLED) and looks like any
other run. An uploaded folder is removed; one that fails stays, and a second sync goes on from
where the first stopped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fer_exp import cli

KEYS = {
    "spool": ("mlruns/spool", "a spool folder (mlruns/spool/<run id>) or the folder that holds them"),
    "tracking.uri": (None, "the server to upload to (default: the one each run was on, or MLFLOW_TRACKING_URI)"),
    "tracking.dir": (None, "a local store to upload to instead (a folder, as fer_exp.run's tracking.dir=)"),
}


def main(argv: list[str] | None = None) -> int:
    args = cli.parse(argv, KEYS, __doc__)
    from fer_exp import tracking
    from fer_exp.tracking.outbox import RUN

    root = Path(args.spool)
    folders = [root] if (root / RUN).exists() else sorted(p.parent for p in root.glob(f"*/{RUN}"))
    if not folders:
        print(f"nothing to upload: no spooled run in {root.resolve()}")
        return 0
    if args.tracking.uri or args.tracking.dir:
        os.environ["MLFLOW_TRACKING_URI"] = tracking.resolve_uri(args.tracking.uri, args.tracking.dir or "mlruns")
    failed = 0
    for folder in folders:
        try:
            run = tracking.replay(folder)
        except Exception as e:  # the server away again, refused credentials: keep the folder, say why
            print(f"error: {folder}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(
            f"uploaded run {run['run_id']} ({run['name']}, {run['status']}) to {tracking.resolve_uri(None)}; removed {folder}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

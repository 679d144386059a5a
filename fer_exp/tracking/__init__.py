"""Everything that talks to MLflow; nothing else in fer_exp imports it. Beside it, two MLflow-free
modules of what a run records: outbox (a job's calls while its server is away) and provenance (code,
packages and command line).

    store     where runs go (a SQLite store or a tracking server), access to it, UI links
    runs      a job's run from start to end, what it logs, writes to other runs by id
    outage    a job's records while a tracking server is away, and their replay (fer_exp.sync)
    queries   runs as plain records (run_id, name, status, params, metrics, tags, ...), sweeps, models
    registry  registered models and the alias `champion`
    names     the tags and artifacts fer_exp records
    outbox    the spool folder of a job's calls, in order (no MLflow)
    provenance  the commit, its patch, the packages, the command line (no MLflow)

Callers use the names re-exported here: `from fer_exp import tracking; tracking.start_run(...)`.
"""

from fer_exp.tracking.names import *  # the tag names: the package's vocabulary
from fer_exp.tracking.outage import replay
from fer_exp.tracking.queries import (
    artifact_text,
    download_artifacts,
    download_files,
    epoch_seconds,
    experiment_name,
    experiment_runs,
    find_previous,
    get_record,
    histories,
    job_records,
    latest_sweep,
    load_logged_model,
    load_text,
    record,
    resolve_run,
    sweep_jobs,
)
from fer_exp.tracking.registry import champion, register_champion
from fer_exp.tracking.runs import (
    create_run,
    create_sweep_run,
    end_run,
    log_dataset,
    log_dict,
    log_files,
    log_keras_model,
    log_metrics,
    log_story,
    log_text,
    note_reused,
    set_tags,
    start_run,
)
from fer_exp.tracking.store import (
    PASSWORD,
    USER,
    AccessError,
    TrackingError,
    configure,
    connect,
    describe_error,
    is_server,
    missing_store,
    quick_failures,
    resolve_uri,
    share_view,
    store_uris,
    use_experiment_of,
    view_link,
)

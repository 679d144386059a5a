# fer_exp: `make help` lists the targets. Every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := $(VENV)/.installed-extras
# uv installs exactly what uv.lock pins (`make lock` refreshes it); it lives in its own small venv
UV_VERSION := 0.13.9
UV     := .tools/bin/uv
# --inexact: the core install leaves the extras in place (a `make server` beside a running `make test`).
# --compile-bytecode: every module's .pyc is written once, here. Without it, where PYTHONDONTWRITEBYTECODE
# is set (as on our machines) every process compiles TensorFlow's, Keras's and MLflow's sources again.
UV_SYNC = UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(UV) sync --frozen --inexact --compile-bytecode --python $(PYTHON) --quiet
HOST   ?= 127.0.0.1
PORT   ?= 5000
# The MLflow store that `make ui`, `make compare`, `make story` and `make serve` read (the commands' tracking.dir=)
STORE  ?= $(CURDIR)/mlruns
# `make server`: the tracking server's database (PostgreSQL or SQLite URI), artifact folder and port
SERVER_DB ?= sqlite:///$(CURDIR)/mlruns/server.db
SERVER_ARTIFACTS ?= $(CURDIR)/mlruns/server-artifacts
SERVER_PORT ?= 5050
# uvicorn worker processes of `make server` and `make ui` (MLflow's default, 4; each imports MLflow)
WORKERS ?= 4
# `make server AUTH=1`: MLflow's basic-auth app. Users and permissions live in SERVER_AUTH_DB; the
# admin's password comes from MLFLOW_AUTH_ADMIN_PASSWORD or the file ADMIN_PASSWORD_FILE (never the
# command line or the repo); jobs log in with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
AUTH ?=
SERVER_AUTH_DB ?= sqlite:///$(CURDIR)/mlruns/server-auth.db
SERVER_AUTH_INI ?= $(CURDIR)/mlruns/server-auth.ini
ADMIN_PASSWORD_FILE ?=
# MLflow's server also starts job runners (huey consumers, for its GenAI evaluation jobs), which
# fer_exp never uses: each imports MLflow, slowing every start. Set it to true to have them.
NO_JOBS = MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
# What `make serve` serves, and where
MODEL  ?= models:/fer@champion
SERVE_PORT ?= 5001
# `make dashboard`'s port
DASHBOARD_PORT ?= 8080
# Extra Hydra overrides for `make sweep`, e.g. ARGS="epochs=1 data.limit_per_class=100"
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install install-gpu lock lint format test test-fast demo sweep ui compare story dashboard server serve bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with exactly the versions uv.lock pins (no test or cluster extras)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV_SYNC)
	touch $(STAMP)

install-gpu: $(STAMP) ## add TensorFlow's CUDA libraries (NVIDIA GPUs on Linux; untested here, we have no GPU)
	$(UV_SYNC) --extra gpu

# the test and cluster extras (pytest, Playwright, Ray, submitit, ruff): for the tests and hydra/launcher=ray|slurm
$(EXTRAS): $(STAMP)
	$(UV_SYNC) --extra test --extra cluster
	touch $(EXTRAS)

lock: $(UV) ## re-resolve uv.lock to the newest versions pyproject.toml allows (then commit it)
	$(UV) lock --upgrade

lint: $(EXTRAS) ## ruff: lint and format check (`make format` fixes what it can)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(EXTRAS) ## ruff: sort imports, fix what the linter can, format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Two workers (xdist), each running a test file (or a group of files: tests/conftest.py) at a time,
# the slowest first: the slow tests mostly wait on process start-up
test: $(EXTRAS) ## run the test suite (offline; FER2013 parts skip without ../shared/fer2013)
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(EXTRAS) ## the tests that start no process (pytest -m "not slow"): the development loop
	$(BIN)/python -m pytest -n 2 -m "not slow"

demo: install ## the user's 4-job sweep (deep, shallow x 2 learning rates) on built-in synthetic faces, ~2 min
	$(BIN)/python -m fer_exp.run -m model=deep,shallow lr=1e-4,1e-3 experiment=demo

sweep: install ## the same sweep on FER2013 (data.root, default ../shared/fer2013); ARGS=... adds overrides
	$(BIN)/python -m fer_exp.run -m model=deep,shallow lr=1e-4,1e-3 $(ARGS)

ui: install ## the MLflow UI for mlruns/ on http://127.0.0.1:5000 (HOST=, PORT=, STORE= to change)
	@echo "fer_exp: open the link a sweep's summary printed (\`make compare\` prints the latest sweep's) to see its jobs compared"
	$(NO_JOBS) $(BIN)/mlflow ui --backend-store-uri sqlite:///$(STORE)/mlflow.db --default-artifact-root file://$(STORE)/artifacts --host $(HOST) --port $(PORT) --workers $(WORKERS)

compare: install ## table + plot of the latest sweep (ARGS="sweep=<parent run id> metric=... tracking.experiment=...")
	$(BIN)/python -m fer_exp.compare tracking.dir=$(STORE) $(ARGS)

story: install ## the experiment's tuning story as one page: outputs/story/story.html (ARGS="tracking.experiment=... metric=...")
	$(BIN)/python -m fer_exp.story tracking.dir=$(STORE) $(ARGS)

dashboard: install ## optuna-dashboard on the sweeps' Optuna studies (STORE's optuna.db) on http://127.0.0.1:8080 (HOST=, DASHBOARD_PORT=)
	$(UV_SYNC) --extra dashboard
	$(BIN)/optuna-dashboard sqlite:///$(STORE)/optuna.db --host $(HOST) --port $(DASHBOARD_PORT)

server: install ## a shared MLflow tracking server on 127.0.0.1:5050 (SERVER_DB=postgresql://..., HOST=, SERVER_PORT=, AUTH=1)
ifeq ($(AUTH),)
	$(NO_JOBS) $(BIN)/mlflow server --backend-store-uri $(SERVER_DB) --serve-artifacts --artifacts-destination $(SERVER_ARTIFACTS) \
		--host $(HOST) --port $(SERVER_PORT) --workers $(WORKERS)
else
	@mkdir -p $(dir $(SERVER_AUTH_INI))
	@printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\nadmin_username = admin\n' '$(SERVER_AUTH_DB)' > $(SERVER_AUTH_INI)
	@password="$${MLFLOW_AUTH_ADMIN_PASSWORD:-$$(cat '$(ADMIN_PASSWORD_FILE)' 2>/dev/null)}"; \
	if [ -z "$$password" ]; then echo "make server AUTH=1: set MLFLOW_AUTH_ADMIN_PASSWORD or ADMIN_PASSWORD_FILE=<file> (the admin's password, 12+ characters)" >&2; exit 2; fi; \
	secret="$${MLFLOW_FLASK_SERVER_SECRET_KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(32))')}"; \
	MLFLOW_AUTH_CONFIG_PATH=$(SERVER_AUTH_INI) MLFLOW_AUTH_ADMIN_PASSWORD="$$password" MLFLOW_FLASK_SERVER_SECRET_KEY="$$secret" \
	$(NO_JOBS) exec $(BIN)/mlflow server --app-name basic-auth --backend-store-uri $(SERVER_DB) --serve-artifacts --artifacts-destination $(SERVER_ARTIFACTS) \
		--host $(HOST) --port $(SERVER_PORT) --workers $(WORKERS)
endif

serve: install ## REST predictions from MODEL (default models:/fer@champion) on http://127.0.0.1:5001/invocations
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI=sqlite:///$(STORE)/mlflow.db \
		$(BIN)/mlflow models serve -m "$(MODEL)" --env-manager local --host $(HOST) --port $(SERVE_PORT)

bench: install ## measured speed and memory (needs ../shared/fer2013; ~11 min); table + benchmarks/results/<cpu>_<flags>.json
	$(BIN)/python benchmarks/bench.py $(ARGS)

clean: ## remove Hydra outputs and the decoded-image cache (keeps mlruns/)
	rm -rf outputs multirun .cache

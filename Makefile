# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SNAPSHOTS ?= snapshots
# The embedded default's token secret and admin token: for a laptop demo only (geo_service/config.py DEMO_SECRETS:
# a service listening off loopback refuses them); production sets its own.
DEMO_SECRET ?= geodrop-demo-only
DEMO_ADMIN ?= geodrop-demo-admin
DEMO_PARTNER ?= geodrop-demo-partner-secret
DEMO_CONSOLE ?= geodrop-demo-console
LEDGER ?= var/ledger.sqlite3
CONSOLE_DRAFT ?= var/console.sqlite3
OPERATORS ?= var/operators.json
CHANNELS ?= data/sample/channels.json
SERVICE_PORT ?= 8080
COLLECTOR_PORT ?= 8081
PARTNER_PORT ?= 8082
DELIVER_PORT ?= 8083
CONSOLE_PORT ?= 8084

.PHONY: run demo-token test slow bench capacity lint clean

$(BIN)/geo-snapshot: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# The embedded default: build the sample snapshot (Shenzhen), run the collector on :8081, the demo partner on
# :8082 and a dispatcher delivering wins to it, the placement console on :8084 (its draft a SQLite file filled from
# the sample; operator `demo`, an admin) and the service on :8080 (2 workers), all over one SQLite ledger;
# Ctrl-C stops them all. (The ports and the channels file are variables: the channels file names the partner's port.)
# Secrets reach the processes through the environment make gives the recipe's shell: written into the recipe
# they would be in that shell's command line, which a process list shows to every user of the host.
run: export GEODROP_SERVICE_TOKEN_SECRET = $(DEMO_SECRET)
run: export GEODROP_COLLECTOR_ADMIN_TOKEN = $(DEMO_ADMIN)
run: export GEODROP_CHANNEL_WALLET_SECRET = $(DEMO_PARTNER)
run: export GEODROP_CHANNEL_COUPONS_SECRET = $(DEMO_PARTNER)
run: export GEODROP_SERVICE_PLAYER_WIN_CAP ?= 5
run: export GEODROP_CONSOLE_NEW_TOKEN = $(DEMO_CONSOLE)
run: export GEODROP_CONSOLE_COLLECTOR_ADMIN_TOKEN = $(DEMO_ADMIN)
run: $(BIN)/geo-snapshot
	$(BIN)/geo-snapshot build --source data/sample --out $(SNAPSHOTS) --channels $(CHANNELS)
	@$(BIN)/geo-console operator add --name demo --role admin --operators $(OPERATORS) > /dev/null
	@echo "nearby:    curl 'http://127.0.0.1:$(SERVICE_PORT)/v1/nearby?lat=22.5329&lng=113.9305'"
	@echo "claims:    TOKEN=\$$(make -s demo-token)"
	@echo "prizes:    curl -H \"Authorization: Bearer \$$TOKEN\" http://127.0.0.1:$(SERVICE_PORT)/v1/me/prizes"
	@echo "player:    http://127.0.0.1:$(SERVICE_PORT)/play   (its token: make -s demo-token)"
	@echo "dashboard: http://127.0.0.1:$(COLLECTOR_PORT)/   (admin token: DEMO_ADMIN in the Makefile)"
	@echo "console:   http://127.0.0.1:$(CONSOLE_PORT)/   (operator token: DEMO_CONSOLE in the Makefile; Ctrl-C stops all)"
	@$(BIN)/geo-collector run --snapshots $(SNAPSHOTS) --port $(COLLECTOR_PORT) \
	  --ledger sqlite:///$(LEDGER) --service http://127.0.0.1:$(SERVICE_PORT) --channels $(CHANNELS) & collector=$$!; \
	$(BIN)/geo-deliver partner --port $(PARTNER_PORT) --channels $(CHANNELS) & partner=$$!; \
	$(BIN)/geo-deliver run --ledger sqlite:///$(LEDGER) --channels $(CHANNELS) --port $(DELIVER_PORT) & deliver=$$!; \
	$(BIN)/geo-console serve --draft sqlite:///$(CONSOLE_DRAFT) --seed data/sample --snapshots $(SNAPSHOTS) \
	  --operators $(OPERATORS) --channels $(CHANNELS) --service http://127.0.0.1:$(SERVICE_PORT) \
	  --collector http://127.0.0.1:$(COLLECTOR_PORT) --port $(CONSOLE_PORT) & console=$$!; \
	trap 'kill $$collector $$partner $$deliver $$console 2>/dev/null' EXIT INT TERM; \
	$(BIN)/geo-service serve --snapshots $(SNAPSHOTS) --workers 2 \
	  --port $(SERVICE_PORT) --ledger sqlite:///$(LEDGER) --collector http://127.0.0.1:$(COLLECTOR_PORT)

# A player's token minted with the demo secret (the secret goes by environment, never on a command line).
demo-token: export GEODROP_SERVICE_TOKEN_SECRET = $(DEMO_SECRET)
demo-token: $(BIN)/geo-snapshot
	@$(BIN)/geo-service token --user $${DEMO_USER:-demo}

test: $(BIN)/geo-snapshot
	$(BIN)/python -m pytest -q

# The large-scale runs `make test` skips (marked slow).
slow: $(BIN)/geo-snapshot
	$(BIN)/python -m pytest -q -m slow

bench: $(BIN)/geo-snapshot
	$(BIN)/python bench/build_bench.py
	$(BIN)/python bench/nearby_bench.py
	$(BIN)/python bench/claims_bench.py --json bench/out/claims.json
	$(BIN)/python bench/collector_bench.py --json bench/out/collector.json
	$(BIN)/python bench/hosts_bench.py --json bench/out/hosts.json
	$(BIN)/python bench/faults_bench.py --json bench/out/faults.json
	$(BIN)/python bench/delivery_bench.py --json bench/out/delivery.json
	$(BIN)/python bench/edge_bench.py --json bench/out/edge.json
	$(BIN)/python bench/play_bench.py --slow

# docs/capacity.md's table, from the JSON the benchmarks above wrote.
capacity: $(BIN)/geo-snapshot
	$(BIN)/python bench/capacity.py

clean:
	rm -rf $(VENV) $(SNAPSHOTS) .pytest_cache

lint: $(BIN)/geo-snapshot
	$(BIN)/pip install --quiet -c constraints.txt ruff mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

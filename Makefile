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
LEDGER ?= var/ledger.sqlite3

.PHONY: run test slow bench capacity lint clean

$(BIN)/geo-snapshot: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# The embedded default: build the sample snapshot (Shenzhen), run the collector on :8081, the demo partner on
# :8082 and a dispatcher delivering wins to it, and the service on :8080 (2 workers), all over one SQLite ledger;
# Ctrl-C stops them all.
run: $(BIN)/geo-snapshot
	$(BIN)/geo-snapshot build --source data/sample --out $(SNAPSHOTS)
	@echo "nearby:    curl 'http://127.0.0.1:8080/v1/nearby?lat=22.5329&lng=113.9305'"
	@echo "claims:    TOKEN=\$$(GEODROP_SERVICE_TOKEN_SECRET=$(DEMO_SECRET) $(BIN)/geo-service token --user demo)"
	@echo "prizes:    curl -H \"Authorization: Bearer \$$TOKEN\" http://127.0.0.1:8080/v1/me/prizes"
	@echo "dashboard: http://127.0.0.1:8081/   (admin token for its kill switch: $(DEMO_ADMIN); Ctrl-C stops)"
	@# Secrets go by environment, not flags: a process list shows every flag to every user of the host.
	@export GEODROP_CHANNEL_WALLET_SECRET=$(DEMO_PARTNER) GEODROP_CHANNEL_COUPONS_SECRET=$(DEMO_PARTNER); \
	GEODROP_COLLECTOR_ADMIN_TOKEN=$(DEMO_ADMIN) $(BIN)/geo-collector run --snapshots $(SNAPSHOTS) \
	  --ledger sqlite:///$(LEDGER) --service http://127.0.0.1:8080 --channels data/sample/channels.json & collector=$$!; \
	$(BIN)/geo-deliver partner --port 8082 --channels data/sample/channels.json & partner=$$!; \
	$(BIN)/geo-deliver run --ledger sqlite:///$(LEDGER) --channels data/sample/channels.json --port 8083 & deliver=$$!; \
	trap 'kill $$collector $$partner $$deliver 2>/dev/null' EXIT INT TERM; \
	GEODROP_SERVICE_TOKEN_SECRET=$(DEMO_SECRET) $(BIN)/geo-service serve --snapshots $(SNAPSHOTS) --workers 2 \
	  --ledger sqlite:///$(LEDGER) --collector http://127.0.0.1:8081

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

# docs/capacity.md's table, from the JSON the benchmarks above wrote.
capacity: $(BIN)/geo-snapshot
	$(BIN)/python bench/capacity.py

clean:
	rm -rf $(VENV) $(SNAPSHOTS) .pytest_cache

lint: $(BIN)/geo-snapshot
	$(BIN)/pip install --quiet -c constraints.txt ruff mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

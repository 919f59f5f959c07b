"""Every aiohttp AppKey the service uses."""

from __future__ import annotations

import random

import aiohttp
from aiohttp import web

from geo_service.claims import CappedPlayers, ClaimRules
from geo_service.jwt_tokens import JwtVerifier
from geo_service.ledger import Ledger, LedgerCheck
from geo_service.ledger.deliveries import DeliveryStore
from geo_service.nearby.live import SnapshotHolder, Watcher
from geo_service.settings import ServiceSettings
from geo_service.snapshot.pull import Puller
from geo_service.status_poller import StatusPoller
from geo_service.web.load import LoadMonitor
from geo_service.web.metrics import Metrics

settings_key = web.AppKey("settings_key", ServiceSettings)
snapshot_key = web.AppKey("snapshot_key", SnapshotHolder)
watcher_key = web.AppKey("watcher_key", Watcher)
load_key = web.AppKey("load_key", LoadMonitor)
metrics_key = web.AppKey("metrics_key", Metrics)
ledger_key = web.AppKey("ledger_key", Ledger)
ledger_check_key = web.AppKey("ledger_check_key", LedgerCheck)
rng_key = web.AppKey("rng_key", random.Random)
rules_key = web.AppKey("rules_key", ClaimRules)
capped_key = web.AppKey("capped_key", CappedPlayers)
status_key = web.AppKey("status_key", StatusPoller)
deliveries_key = web.AppKey("deliveries_key", DeliveryStore)  # set where the record database is known
puller_key = web.AppKey("puller_key", Puller)  # set only when the service pulls from an origin
http_key = web.AppKey("http_key", aiohttp.ClientSession)  # the app's one outgoing HTTP client (JWKS fetches)
jwt_key = web.AppKey("jwt_key", JwtVerifier)  # set only when player JWTs are on (jwt_secret or jwt_jwks_url)

"""Every aiohttp AppKey the collector uses."""

from __future__ import annotations

from aiohttp import web

from collector.delivery_panel import DeliveryPanel
from collector.feed import Feed
from collector.files import SnapshotFiles
from collector.service import ServiceClient
from collector.settings import CollectorSettings
from collector.ticker import Ticker
from collector.views import ViewHolder
from geo_service.ledger import LedgerCheck
from geo_service.ledger.ship import Shipper
from geo_service.snapshot.pull import Puller
from geo_service.web.metrics import Metrics

settings_key = web.AppKey("settings_key", CollectorSettings)
views_key = web.AppKey("views_key", ViewHolder)
ticker_key = web.AppKey("ticker_key", Ticker)
feed_key = web.AppKey("feed_key", Feed)
metrics_key = web.AppKey("metrics_key", Metrics)
ledger_check_key = web.AppKey("ledger_check_key", LedgerCheck)
shipper_key = web.AppKey("shipper_key", Shipper)  # set only for a Redis ledger with a record_db
puller_key = web.AppKey("puller_key", Puller)  # set only when the collector pulls from an origin
files_key = web.AppKey("files_key", SnapshotFiles)
service_key = web.AppKey("service_key", ServiceClient)
deliveries_key = web.AppKey("deliveries_key", DeliveryPanel)  # set only with a channels file

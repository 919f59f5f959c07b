"""Every aiohttp AppKey the console uses, and the state they hold."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from delivery.channels import Channels
from loaders.records import District
from placement.auth import OperatorBook
from placement.db import Db
from placement.publish import Job
from placement.settings import ConsoleSettings


@dataclass(slots=True)
class DraftState:
    """What the console keeps between requests: the districts (parsed once: the console does not edit them, and
    China's counties take seconds to parse), their outlines for the map, and the publish jobs."""

    districts: dict[int, District] = field(default_factory=dict)
    outlines: bytes = b""  # gzipped: China's counties are megabytes of text, and every browser takes gzip
    outlines_etag: str = ""
    channels: Channels | None = None
    jobs: dict[int, Job] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # the jobs running, stopped with the app
    job: Job | None = None  # the one preview, publish or rollback at a time, from its claim to its end
    next_job_id: int = 1


settings_key = web.AppKey("settings_key", ConsoleSettings)
db_key = web.AppKey("db_key", Db)
book_key = web.AppKey("book_key", OperatorBook)
state_key = web.AppKey("state_key", DraftState)

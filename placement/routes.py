"""The console's other routes: the page, sign-in, preview, publish and rollback (as jobs the page follows), changes
that need no rebuild (through the collector's live routes), health and the API's description."""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from geo_service.snapshot.folder import current_seq, list_seqs
from geo_service.snapshot.format import SnapshotError
from geo_service.snapshot.origin import OriginError
from geo_service.web.errors import ApiError, InvalidParam, NotFound, Unauthorized
from geo_service.web.params import id_param, integer_of, json_object
from geo_service.web.responses import json_response
from geo_service.web.routing import Route
from geo_service.web.static import SHARED, StaticFiles
from loaders.errors import LoaderError
from placement import store
from placement.auth import COOKIE, from_bearer, operator, session_value
from placement.db import Cursor
from placement.keys import book_key, db_key, settings_key, state_key
from placement.openapi import openapi_spec
from placement.publish import Job, preview, run_publish, run_rollback

log = logging.getLogger("geodrop.console")
FILES = StaticFiles(Path(str(resources.files("placement").joinpath("static"))), SHARED)
LIVE_TIMEOUT_S = 10


class Busy(ApiError):
    status, code = 409, "build_running"  # one build at a time: the page shows the running one


class DraftChanged(ApiError):
    status, code = 409, "draft_changed"  # the draft moved on since the preview the publish was asked from


class BuildRefused(ApiError):
    status, code = 422, "build_refused"  # the build found bad rows; nothing was published


class NothingToRollBack(ApiError):
    status, code = 409, "nothing_to_roll_back"


class LiveOff(ApiError):
    status, code = 404, "live_off"  # no collector is configured: this console has no live routes


class LiveUnavailable(ApiError):
    status, code = 503, "live_unavailable"  # the collector's live routes are not configured or did not answer


# -- sign-in ---------------------------------------------------------------------------------------------------

async def open_session(request: web.Request) -> web.Response:
    """Trade an operator's bearer token for a session cookie the page's script cannot read."""
    ops = request.app[book_key].current()
    op = from_bearer(ops, request.headers.get("Authorization", ""))
    if op is None:
        raise Unauthorized("sign in with Authorization: Bearer <operator token>")
    settings = request.app[settings_key]
    expires = int(time.time()) + settings.session_s
    response = json_response({"name": op.name, "role": op.role, "expires_at": expires}, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, session_value(ops, op, expires), max_age=settings.session_s, path="/v1", httponly=True,
                        samesite="Strict", secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https")
    log.info("signed in", extra={"audit": "session", "operator": op.name, "role": op.role})
    return response


async def session_state(request: web.Request) -> web.Response:
    try:
        op = operator(request, request.app[book_key])
    except ApiError:
        return json_response({"name": None}, headers={"Cache-Control": "no-store"})
    return json_response({"name": op.name, "role": op.role}, headers={"Cache-Control": "no-store"})


async def close_session(request: web.Request) -> web.Response:
    response = json_response({"closed": True})
    response.del_cookie(COOKIE, path="/v1", httponly=True, samesite="Strict")
    return response


# -- preview, publish, rollback --------------------------------------------------------------------------------

async def do_preview(request: web.Request) -> web.Response:
    operator(request, request.app[book_key])
    app = request.app
    if app[state_key].building.locked():
        raise Busy("a build is running; preview when it is done")
    async with app[state_key].building:
        revision = await app[db_key].read(store.revision)
        try:
            result = await preview(app[settings_key], app[db_key])
        except LoaderError as exc:
            raise BuildRefused(f"the build refuses the draft: {exc}") from None
    return json_response({"revision": revision, **result}, headers={"Cache-Control": "no-store"})


def _start(request: web.Request, who: str, action: str, work: Any) -> Job:
    """Run a job in the background under the build lock; the page polls /v1/jobs/{id}."""
    state = request.app[state_key]
    job = Job(id=len(state.jobs) + 1, who=who, action=action)
    state.jobs[job.id] = job

    async def run() -> None:
        final, error = "published", None
        async with state.building:
            try:
                await work(job)
                final = "served" if job.phase == "served" else "published"
            except (LoaderError, SnapshotError, OriginError, TimeoutError, OSError, aiohttp.ClientError) as exc:
                final, error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - a job's failure is shown on its page, and logged
                log.exception("console job failed")
                final, error = "failed", f"internal error: {type(exc).__name__}"
        job.state, job.error = final, error  # only now: the next job may start as soon as the page sees this one end
        log.info("console job", extra={"audit": action, "operator": who, **job.view()})

    state.tasks.add(asyncio.create_task(run(), name=f"console-{action}-{job.id}"))
    return job


async def do_publish(request: web.Request) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name
    body = json_object(await request.read())
    revision = integer_of(body, "revision")
    app = request.app
    if app[state_key].building.locked():
        raise Busy("a build is running")
    now = await app[db_key].read(store.revision)
    if now != revision:
        raise DraftChanged(f"the draft is at revision {now}, not {revision}: preview again", field="revision")
    settings, db = app[settings_key], app[db_key]

    async def work(job: Job) -> None:
        await run_publish(settings, db, job)
        await db.write(lambda cur: store.record(cur, who, "publish", f"snapshot:{job.seq}", revision,
                                                {"seq": job.seq, "revision": revision, "phases": job.phases}))

    return json_response(_start(request, who, "publish", work).view(), status=202)


async def do_rollback(request: web.Request) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name
    body = json_object(await request.read())
    to = integer_of(body, "to") if body.get("to") is not None else None
    app = request.app
    if app[state_key].building.locked():
        raise Busy("a build is running")
    settings, db = app[settings_key], app[db_key]
    before, seqs = await asyncio.to_thread(lambda: (current_seq(settings.snapshots), list_seqs(settings.snapshots)))
    if to is not None and to not in seqs:
        raise NotFound(f"no snapshot {to}; the snapshots folder has {seqs}", field="to")
    if to is None and not any(s < (before or 0) for s in seqs):
        raise NothingToRollBack(f"no snapshot older than {before} to roll back to")

    async def work(job: Job) -> None:
        await run_rollback(settings, job, to)
        await db.write(lambda cur: store.record(cur, who, "rollback", f"snapshot:{job.seq}", job.seq or 0,
                                                {"from": before, "to": job.seq}))

    return json_response(_start(request, who, "rollback", work).view(), status=202)


async def job_state(request: web.Request) -> web.Response:
    operator(request, request.app[book_key])
    job = request.app[state_key].jobs.get(id_param(request.match_info["job_id"], "job_id"))
    if job is None:
        raise NotFound("no such job", field="job_id")
    return json_response(job.view(), headers={"Cache-Control": "no-store"})


async def live(request: web.Request) -> web.Response:
    """The live snapshot and those a rollback can go back to."""
    operator(request, request.app[book_key])
    snapshots = request.app[settings_key].snapshots
    current, seqs = await asyncio.to_thread(lambda: (current_seq(snapshots), list_seqs(snapshots)))
    return json_response({"current": current, "snapshots": seqs, "live_changes": bool(request.app[settings_key].collector)},
                         headers={"Cache-Control": "no-store"})


# -- changes that need no rebuild ------------------------------------------------------------------------------

async def _collector(request: web.Request, path: str, body: dict[str, Any]) -> Any:
    settings = request.app[settings_key]
    if not (settings.collector and settings.collector_admin_token):
        raise LiveOff("live changes are off: set collector and collector_admin_token")
    headers = {"Authorization": f"Bearer {settings.collector_admin_token}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIVE_TIMEOUT_S)) as http:
            async with http.post(f"{settings.collector.rstrip('/')}{path}", json=body, headers=headers) as resp:
                answer = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise LiveUnavailable(f"the collector did not answer ({type(exc).__name__}); nothing changed") from None
    if resp.status == 200:
        return answer
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    if not 400 <= resp.status < 500:
        raise LiveUnavailable(f"the collector answered {resp.status}; nothing changed")
    refused = ApiError(f"the collector refused: {error.get('message', resp.status)}", field=error.get("field"))
    refused.status, refused.code = resp.status, str(error.get("code", "refused"))  # its own refusal, passed on
    raise refused


async def live_prize(request: web.Request) -> web.Response:
    """Change a prize's quota and/or rate now (the collector's live route); the draft follows."""
    who = operator(request, request.app[book_key], "admin").name
    task_id, prize_type = id_param(request.match_info["task_id"], "task_id"), request.match_info["prize_type"]
    body = json_object(await request.read())
    if set(body) - {"quota", "rate_per_s"} or not body:
        raise InvalidParam("give quota and/or rate_per_s", field="quota")
    answer = await _collector(request, f"/v1/admin/prizes/{task_id}/{quote(prize_type, safe='')}", body)

    def follow(cur: Cursor) -> None:
        sets = {k: body[k] for k in ("quota", "rate_per_s") if k in body}
        for column, value in sets.items():
            cur.execute(f"UPDATE task_prizes SET {column} = %s WHERE task_id = %s AND prize_type = %s",
                        (value, task_id, prize_type))
        store.record(cur, who, "live_prize", f"task:{task_id}", 0, {"prize_type": prize_type, "after": sets,
                                                                     "ledger": answer})

    await request.app[db_key].write(follow)
    return json_response({"applied": "live, no rebuild", "ledger": answer})


async def live_enabled(request: web.Request) -> web.Response:
    """The kill switch, now (the collector's live route); the draft follows."""
    who = operator(request, request.app[book_key], "admin").name
    task_id = id_param(request.match_info["task_id"], "task_id")
    body = json_object(await request.read())
    if not isinstance(body.get("enabled"), bool):
        raise InvalidParam("enabled must be true or false", field="enabled")
    answer = await _collector(request, f"/v1/admin/tasks/{task_id}", {"enabled": body["enabled"]})

    def follow(cur: Cursor) -> None:
        cur.execute("UPDATE tasks SET enabled = %s WHERE task_id = %s", (int(body["enabled"]), task_id))
        store.record(cur, who, "live_enabled", f"task:{task_id}", 0, {"after": {"enabled": body["enabled"]},
                                                                       "ledger": answer})

    await request.app[db_key].write(follow)
    return json_response({"applied": "live, no rebuild", "ledger": answer})


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    revision = await app[db_key].read(store.revision)
    return json_response({"ok": True, "draft": app[db_key].dialect, "revision": revision,
                          "live_seq": current_seq(app[settings_key].snapshots),
                          "building": app[state_key].building.locked()})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_spec())


ROUTES: list[Route] = [
    ("GET", "/", FILES.page("console.html")),
    ("GET", "/openapi.json", openapi),
    ("GET", "/static/{name:.+}", FILES.serve),
    ("GET", "/healthz", healthz),
    ("GET", "/v1/session", session_state),
    ("POST", "/v1/session", open_session),
    ("DELETE", "/v1/session", close_session),
    ("POST", "/v1/preview", do_preview),
    ("POST", "/v1/publish", do_publish),
    ("POST", "/v1/rollback", do_rollback),
    ("GET", "/v1/jobs/{job_id}", job_state),
    ("GET", "/v1/live", live),
    ("POST", "/v1/live/prizes/{task_id}/{prize_type}", live_prize),
    ("POST", "/v1/live/tasks/{task_id}", live_enabled),
]

"""The console's other routes: the page, sign-in, preview, publish and rollback (as jobs the page follows), changes
that need no rebuild (through the collector's live routes), health and the API's description."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
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
from placement.db import DraftError
from placement.keys import book_key, db_key, settings_key, state_key
from placement.openapi import openapi_spec
from placement.publish import WAITING, Job, preview, run_publish, run_rollback

log = logging.getLogger("geodrop.console")
FILES = StaticFiles(Path(str(resources.files("placement").joinpath("static"))), SHARED)
LIVE_TIMEOUT_S = 10
KEPT_JOBS = 50  # the newest jobs the page can still look up
AUDIT_WAIT_S = 30  # a draft that takes longer to write the job's audit entry: the log keeps it instead


class Busy(ApiError):
    status, code = 409, "build_running"  # one build at a time: the page shows the running one


class DraftChanged(ApiError):
    status, code = 409, "draft_changed"  # the draft moved on since the preview the publish was asked from


class BuildRefused(ApiError):
    status, code = 422, "build_refused"  # the build found bad rows; nothing was published


class NothingToRollBack(ApiError):
    status, code = 409, "nothing_to_roll_back"


class DraftBehind(ApiError):
    status, code = 503, "draft_behind"  # the live change was made; the draft did not follow (said, and logged)


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

def _claim(request: web.Request, who: str, action: str) -> Job:
    """Take the console's one job slot before anything is awaited, so a second click gets 409, not a second build
    (and a rollback cannot queue behind a publish and undo it)."""
    state = request.app[state_key]
    if state.job is not None:
        raise Busy(f"a {state.job.action} is running; try again when it is done")
    state.job = Job(id=state.next_job_id, who=who, action=action)
    state.next_job_id += 1
    return state.job


def _release(request: web.Request, job: Job) -> None:
    state = request.app[state_key]
    if state.job is job:
        state.job = None


async def do_preview(request: web.Request) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name  # a build: an admin's to ask for
    app = request.app
    job = _claim(request, who, "preview")
    try:
        result = await preview(app[settings_key], app[db_key])
    except DraftError:
        raise  # the draft was busy or unreachable: a 503, not the draft's fault
    except LoaderError as exc:
        raise BuildRefused(f"the build refuses the draft: {exc}") from None
    finally:
        _release(request, job)
    return json_response(result, headers={"Cache-Control": "no-store"})


def _start(request: web.Request, job: Job, work: Callable[[Job], Awaitable[None]], detail: dict[str, Any]) -> Job:
    """Run a claimed job in the background; the page polls /v1/jobs/{id}. Its audit entry is written however it
    ends, once CURRENT may have moved (a failure names its phase), even when the console is stopping."""
    state, db = request.app[state_key], request.app[db_key]
    state.jobs[job.id] = job
    for old in sorted(state.jobs)[:-KEPT_JOBS]:
        del state.jobs[old]

    async def run() -> None:
        final, error = "failed", "stopped"  # as the job is left if the console stops under it
        try:
            await work(job)
            final, error = ("served" if job.phase == "served" else "published"), ""
            if job.phase == WAITING:  # it returned while still waiting: the console is stopping
                error = "not confirmed served: the console stopped while waiting for the services"
        except (LoaderError, SnapshotError, OriginError, TimeoutError, OSError, aiohttp.ClientError) as exc:
            error = str(exc)
        except asyncio.CancelledError:  # a rollback overtaking it, or the console stopping: CURRENT may have moved
            if job.phase == WAITING:
                final, error = "published", "not confirmed served: stopped while waiting for the services"
        except Exception as exc:  # noqa: BLE001 - a job's failure is shown on its page, and logged
            log.exception("console job failed")
            error = f"internal error: {type(exc).__name__}"
        finally:
            entry = {**detail, "seq": job.seq, "state": final, "error": error, "phase": job.phase, "phases": job.phases}
            try:
                audit = db.write(lambda cur: store.record(cur, job.who, job.action, f"snapshot:{job.seq}", job.seq or 0,
                                                          entry))
                await asyncio.wait_for(asyncio.shield(audit), AUDIT_WAIT_S)
            except (DraftError, TimeoutError, asyncio.CancelledError):
                log.error("console job not audited in the draft", extra={"audit": job.action, **entry})
            finally:  # whatever became of the audit, the slot is free again
                job.state, job.error = final, error or None  # only now: the next job may start as the page sees it
                _release(request, job)
                log.info("console job", extra={"audit": job.action, "operator": job.who, **job.view()})

    task = asyncio.create_task(run(), name=f"console-{job.action}-{job.id}")
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    return job


async def do_publish(request: web.Request) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name
    app = request.app
    settings, db = app[settings_key], app[db_key]
    revision = integer_of(json_object(await request.read()), "revision")
    job = _claim(request, who, "publish")
    try:
        now = await db.read(store.revision)
        if now != revision:
            raise DraftChanged(f"the draft is at revision {now}, not {revision}: preview again", field="revision")
    except BaseException:
        _release(request, job)
        raise
    started = _start(request, job, lambda job: run_publish(settings, db, job, revision), {"revision": revision})
    return json_response(started.view(), status=202)


async def do_rollback(request: web.Request) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name
    app = request.app
    settings = app[settings_key]
    body = json_object(await request.read())
    to = integer_of(body, "to") if body.get("to") is not None else None
    await _stop_waiting_publish(request)
    job = _claim(request, who, "rollback")
    try:
        before, seqs = await asyncio.to_thread(lambda: (current_seq(settings.snapshots), list_seqs(settings.snapshots)))
        if to is not None and to not in seqs:
            raise NotFound(f"no snapshot {to}; the snapshots folder has {seqs}", field="to")
        older = [s for s in seqs if s < (before or 0)]
        if to is None and not older:
            raise NothingToRollBack(f"no snapshot older than {before} to roll back to")
        target = to if to is not None else older[-1]  # decided now, not when the job runs
    except BaseException:
        _release(request, job)
        raise
    started = _start(request, job, lambda job: run_rollback(settings, job, target), {"from": before, "to": target})
    return json_response(started.view(), status=202)


async def _stop_waiting_publish(request: web.Request) -> None:
    """A rollback must not wait behind a publish that has moved CURRENT and only waits for the services to serve it
    (the rollback is what an operator reaches for when they should not): that publish ends as published, unconfirmed."""
    state = request.app[state_key]
    job = state.job
    if job is None or job.action != "publish" or job.phase != WAITING:
        return
    for task in [t for t in state.tasks if t.get_name() == f"console-publish-{job.id}"]:
        task.cancel()
        await asyncio.wait([task], timeout=AUDIT_WAIT_S)


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
    error = answer.get("error") if isinstance(answer, dict) else None
    error = error if isinstance(error, dict) else {}
    if not 400 <= resp.status < 500:
        raise LiveUnavailable(f"the collector answered {resp.status}; nothing changed")
    refused = ApiError(f"the collector refused: {error.get('message', resp.status)}", field=error.get("field"))
    refused.status, refused.code = resp.status, str(error.get("code", "refused"))  # its own refusal, passed on
    raise refused


async def _apply_live(request: web.Request, who: str, task_id: int, path: str, body: dict[str, Any], action: str,
                      changes: dict[str, Any]) -> web.Response:
    """Make a live change through the collector, then have the draft follow it. The ledger is changed first (it is
    what players meet); if the draft then cannot follow, the answer says so and the log keeps the change."""
    answer = await _collector(request, path, body)
    # The ledger's own values where it says them (it keeps rates in thousandths); the draft follows those.
    said = answer if isinstance(answer, dict) else {}
    changes = {k: said[k] if k in said and k != "prize_type" else v for k, v in changes.items()}
    try:
        await request.app[db_key].write(lambda cur: store.live_follow(cur, who, task_id, action, dict(changes), answer))
    except (DraftError, store.Missing) as exc:
        log.error("live change not followed by the draft", extra={"audit": action, "operator": who, "task_id": task_id,
                                                                  "changes": changes, "ledger": answer})
        raise DraftBehind(f"applied live (the ledger holds it), but the draft did not follow: {exc}") from None
    return json_response({"applied": "live, no rebuild", "ledger": answer})


async def live_prize(request: web.Request) -> web.Response:
    """Change a prize's quota and/or rate now (the collector's live route); the draft follows."""
    task_id, prize_type = id_param(request.match_info["task_id"], "task_id"), request.match_info["prize_type"]
    who = operator(request, request.app[book_key], "admin").name
    body = json_object(await request.read())
    if set(body) - {"quota", "rate_per_s"} or not body:
        raise InvalidParam("give quota and/or rate_per_s", field="quota")
    return await _apply_live(request, who, task_id, f"/v1/admin/prizes/{task_id}/{quote(prize_type, safe='')}", body,
                             "live_prize", {"prize_type": prize_type, **body})


async def live_enabled(request: web.Request) -> web.Response:
    """The kill switch, now (the collector's live route); the draft follows."""
    task_id = id_param(request.match_info["task_id"], "task_id")
    who = operator(request, request.app[book_key], "admin").name
    body = json_object(await request.read())
    if not isinstance(body.get("enabled"), bool):
        raise InvalidParam("enabled must be true or false", field="enabled")
    return await _apply_live(request, who, task_id, f"/v1/admin/tasks/{task_id}", {"enabled": body["enabled"]},
                             "live_enabled", {"enabled": int(body["enabled"])})


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    revision = await app[db_key].read(store.revision)
    return json_response({"ok": True, "draft": app[db_key].dialect, "revision": revision,
                          "live_seq": current_seq(app[settings_key].snapshots),
                          "building": app[state_key].job is not None})


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

"""The web console: pages for people, on top of the same services and selectors
the APIs use. The browser talks to the APIs themselves for what must stream or
show progress (POST /jobs with an upload progress bar, GET /jobs/{id}/events,
the compat chat stream); these views render pages and do the small writes
(sign in and out, cancel) with Django's CSRF protection."""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_POST

from apikeys.services import api_key_authenticate
from claudesvc.auth import SESSION_API_KEY, Caller, caller_for_session
from claudesvc.errors import NotFound
from console.markdown import render_markdown
from jobs.jobs_api.serializers import PUBLIC_STATUS
from jobs.models import JobStatus
from jobs.selectors import artifact_get, job_get, job_list
from jobs.services import MODEL_ALIASES, job_cancel
from jobs.sessions import session_list

PAGE_SIZE = 20
# What a preview may show inline: never HTML or SVG, which could run script on this origin.
PREVIEW_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"}
TEXT_TYPES = {"text/plain", "text/markdown", "text/csv", "application/json", "text/html"}
TEXT_PREVIEW_BYTES = 64 * 1024


def console_caller(view):
    """Run ``view`` with ``caller``: the signed-in user or the session's API key, else sign in first."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        caller = caller_for_session(request.user, request.session)
        if caller is None:
            return redirect_to_login(request.get_full_path(), reverse("console:login"))
        return view(request, caller, *args, **kwargs)

    return wrapper


def _owner_label(request, caller: Caller) -> str:
    if caller.api_key:
        return _("API key %(prefix)s…") % {"prefix": caller.api_key.prefix}
    return request.user.get_username()


def _status_labels() -> dict[str, str]:
    """The Jobs API's four states, as the page's language says them."""
    return {
        "pending": _("pending"),
        "running": _("running"),
        "completed": _("completed"),
        "failed": _("failed"),
    }


# Strings the pages' scripts show, translated here (the page carries them as JSON).
def _script_strings() -> dict[str, str]:
    return {
        "Remove": _("Remove"),
        "You": _("You"),
        "Cancel this job?": _("Cancel this job?"),
        "Delete this conversation?": _("Delete this conversation?"),
        "The upload failed: the connection was lost.": _("The upload failed: the connection was lost."),
        **{f"status:{name}": label for name, label in _status_labels().items()},
    }


def _context(request, caller: Caller, nav: str = "", **extra) -> dict:
    return {"who": _owner_label(request, caller), "nav": nav, "i18n_js": _script_strings(), **extra}


def login_view(request):
    next_url = request.POST.get("next") or request.GET.get("next") or ""
    if not url_has_allowed_host_and_scheme(next_url, {request.get_host()}, require_https=request.is_secure()):
        next_url = ""
    next_url = next_url or reverse("console:submit")
    form = AuthenticationForm(
        request, data=request.POST if request.POST.get("method") == "password" else None
    )
    key_error = ""
    if request.method == "POST":
        if request.POST.get("method") == "key":
            key = api_key_authenticate((request.POST.get("api_key") or "").strip())
            if key is None:
                key_error = _("This API key is not valid or was revoked.")
            else:
                logout(request)  # a fresh session: no user, only the key
                request.session.cycle_key()
                request.session[SESSION_API_KEY] = key.pk
                return redirect(next_url)
        elif form.is_valid():
            login(request, form.get_user())
            request.session.pop(SESSION_API_KEY, None)
            return redirect(next_url)
    return render(request, "console/login.html", {"form": form, "key_error": key_error, "next": next_url})


@require_POST
def logout_view(request):
    logout(request)  # flushes the session, the pasted key with it
    return redirect("console:login")


@console_caller
def submit_view(request, caller):
    return render(
        request,
        "console/submit.html",
        _context(
            request,
            caller,
            "submit",
            models=sorted(MODEL_ALIASES),
            default_model=settings.CLAUDE_DEFAULT_MODEL,
            max_files=settings.ATTACHMENTS_MAX_FILES,
            max_bytes=settings.ATTACHMENT_MAX_BYTES,
        ),
    )


STATUS_FILTERS = ["pending", "running", "completed", "failed"]


@console_caller
def jobs_view(request, caller):
    jobs = job_list(caller=caller).exclude(source="transcription").select_related("transcription")
    status = request.GET.get("status") or ""
    kind = request.GET.get("kind") or ""
    query = (request.GET.get("q") or "").strip()
    if status in STATUS_FILTERS:
        jobs = jobs.filter(status__in=[k for k, v in PUBLIC_STATUS.items() if v == status])
    if kind in {"claude", "transcription"}:
        jobs = jobs.filter(kind=kind)
    if query:
        jobs = jobs.filter(prompt__icontains=query[:200])
    page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
    labels = _status_labels()
    for job in page.object_list:
        job.public_status = PUBLIC_STATUS[job.status]
        job.status_label = labels[job.public_status]
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "console/jobs.html",
        _context(
            request,
            caller,
            "jobs",
            page=page,
            status=status,
            kind=kind,
            q=query,
            statuses=list(_status_labels().items()),
            status_labels=_status_labels(),
            filter_query=params.urlencode(),
        ),
    )


def _job_or_404(caller: Caller, job_id: str):
    try:
        return job_get(caller=caller, id=job_id)
    except NotFound:
        raise Http404(_("No such job")) from None


def _usage(job) -> dict | None:
    usage = job.usage or {}
    if not usage and job.cost_usd is None:
        return None
    return {
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cache_read_input_tokens": usage.get("cache_read_input_tokens"),
        "cost_usd": job.cost_usd,
    }


def _base_type(content_type: str) -> str:
    """``text/markdown; charset=utf-8`` -> ``text/markdown``."""
    return content_type.split(";", 1)[0].strip().lower()


def _artifact_previews(job) -> list[dict]:
    previews = []
    for artifact in job.artifacts.order_by("name"):
        item = {"artifact": artifact, "kind": None, "text": None}
        ctype = _base_type(artifact.content_type)
        if ctype.startswith("image/") and ctype in PREVIEW_TYPES:
            item["kind"] = "image"
        elif ctype == "application/pdf":
            item["kind"] = "pdf"
        elif ctype in TEXT_TYPES:
            with artifact.file.open("rb") as fh:
                raw = fh.read(TEXT_PREVIEW_BYTES + 1)
            item["kind"] = "text"
            item["text"] = raw[:TEXT_PREVIEW_BYTES].decode("utf-8", errors="replace")
            item["truncated"] = len(raw) > TEXT_PREVIEW_BYTES
        previews.append(item)
    return previews


@console_caller
def job_view(request, caller, job_id):
    job = _job_or_404(caller, job_id)
    finished = job.status not in (JobStatus.PENDING, JobStatus.RUNNING)
    return render(
        request,
        "console/job.html",
        _context(
            request,
            caller,
            "jobs",
            job=job,
            public_status=PUBLIC_STATUS[job.status],
            status_label=_status_labels()[PUBLIC_STATUS[job.status]],
            finished=finished,
            answer_html=render_markdown(job.result) if finished and job.result else "",
            usage=_usage(job),
            attachments=list(job.attachments.order_by("name")),
            artifacts=_artifact_previews(job) if finished else [],
            transcription=getattr(job, "transcription", None) if job.kind == "transcription" else None,
        ),
    )


@xframe_options_sameorigin  # shown in the job page's <object>
@console_caller
def artifact_preview_view(request, caller, job_id, filename):
    """An image or PDF of the job shown inline (the API's download route says
    ``attachment``); other types are not served here."""
    job = _job_or_404(caller, job_id)
    try:
        artifact = artifact_get(job=job, name=filename)
    except NotFound:
        raise Http404(_("No such file")) from None
    if _base_type(artifact.content_type) not in PREVIEW_TYPES:
        raise Http404(_("No preview for this type"))
    response = FileResponse(artifact.file.open("rb"), content_type=artifact.content_type)
    response["Content-Disposition"] = "inline"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; object-src 'self'"
    return response


@console_caller
@require_POST
def job_cancel_view(request, caller, job_id):
    job = _job_or_404(caller, job_id)
    if job.status in (JobStatus.PENDING, JobStatus.RUNNING):
        job_cancel(job=job)
    return redirect("console:job", job_id=job.pk)


@console_caller
def chat_view(request, caller):
    sessions = list(session_list(caller=caller))
    current = request.GET.get("session") or ""
    turns = []
    selected = next((s for s in sessions if s.external_id == current), None)
    if selected is not None:
        for job in selected.jobs.order_by("created_at"):
            answer = render_markdown(job.result) if job.result else ""
            turns.append({"prompt": job.prompt, "answer_html": answer, "status": PUBLIC_STATUS[job.status]})
    return render(
        request,
        "console/chat.html",
        _context(
            request,
            caller,
            "chat",
            sessions=sessions,
            selected=selected,
            turns=turns,
            models=sorted(MODEL_ALIASES),
            default_model=settings.CLAUDE_DEFAULT_MODEL,
        ),
    )

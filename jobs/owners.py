"""Everything one owner (an API key, or a Django user for JWT callers) has, as a whole.

Above both the job services and the sessions (a session's delete cancels its
running turn; an owner's delete removes its sessions, then its jobs), so
neither of them imports the other's caller.
"""

from __future__ import annotations

from jobs.models import ClaudeSession, Job
from jobs.services import job_delete
from jobs.sessions import session_delete


def jobs_delete_for_owner(*, api_key=None, user=None) -> int:
    """Delete everything an API key (or a Django user, for JWT callers) owns that has
    files, through the services that remove them: its sessions (their folders and
    transcripts), then its jobs (stored files, working folders, transcription child
    jobs). For deleting the key or user itself; returns the number of jobs deleted."""
    if (api_key is None) == (user is None):
        raise ValueError("name exactly one owner: api_key or user")
    owner = {"api_key": api_key} if api_key is not None else {"user": user}
    for session in ClaudeSession.objects.filter(**owner):
        session_delete(session=session)
    deleted = 0
    # Children (a transcription's summaries) go with their parent; re-read after each delete.
    while job := Job.objects.filter(**owner).order_by("created_at").first():
        job_delete(job=job)
        deleted += 1
    return deleted

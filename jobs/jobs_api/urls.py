from django.urls import path

from jobs.jobs_api import views
from jobs.jobs_api.usage import UsageView

app_name = "jobs"

urlpatterns = [
    path("jobs", views.JobListCreateView.as_view(), name="list"),
    path("usage", UsageView.as_view(), name="usage"),
    path("jobs/<str:job_id>", views.JobDetailView.as_view(), name="detail"),
    path("jobs/<str:job_id>/stream", views.JobStreamView.as_view(), name="stream"),
    path("jobs/<str:job_id>/events", views.JobEventsView.as_view(), name="events"),
    # <path:> so a file the job wrote in a sub-folder ("charts/a.png") has a URL too; the name is
    # only ever looked up among the job's artifacts, never joined to a path on disk.
    path("jobs/<str:job_id>/download/<path:filename>", views.JobDownloadView.as_view(), name="download"),
]

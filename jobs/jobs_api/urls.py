from django.urls import path

from jobs.jobs_api import views

app_name = "jobs"

urlpatterns = [
    path("jobs", views.JobListCreateView.as_view(), name="list"),
    path("jobs/<str:job_id>", views.JobDetailView.as_view(), name="detail"),
    path("jobs/<str:job_id>/stream", views.JobStreamView.as_view(), name="stream"),
    path("jobs/<str:job_id>/events", views.JobEventsView.as_view(), name="events"),
]

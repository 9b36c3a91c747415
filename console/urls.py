from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.submit_view, name="submit"),
    path("login", views.login_view, name="login"),
    path("logout", views.logout_view, name="logout"),
    path("jobs", views.jobs_view, name="jobs"),
    path("jobs/<str:job_id>", views.job_view, name="job"),
    path("jobs/<str:job_id>/cancel", views.job_cancel_view, name="cancel"),
    path("jobs/<str:job_id>/preview/<path:filename>", views.artifact_preview_view, name="preview"),
    path("chat", views.chat_view, name="chat"),
]

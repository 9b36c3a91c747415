from django.urls import path

from jobs.process_api import views

app_name = "process"

urlpatterns = [
    path("execute", views.ExecuteView.as_view(), name="execute"),
    path("execute/async", views.ExecuteAsyncView.as_view(), name="execute-async"),
    path("processes", views.ProcessListView.as_view(), name="list"),
    path("processes/<str:id>", views.ProcessDetailView.as_view(), name="detail"),
    path("health", views.HealthView.as_view(), name="health"),
    path("metrics", views.MetricsView.as_view(), name="metrics"),
]

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from claudesvc import views
from claudesvc.prometheus import metrics_view

urlpatterns = [
    path("", views.landing, name="landing"),
    path("health", views.HealthView.as_view(), name="health"),
    path("metrics", metrics_view, name="prometheus-metrics"),
    path("openapi.yaml", SpectacularAPIView.as_view(), name="openapi"),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    path("admin/", admin.site.urls),
    path("console/", include("console.urls")),
    path("", include("jobs.jobs_api.urls")),
    path("api/v1/claude/", include("jobs.process_api.urls")),
    path("", include("jobs.compat_api.urls")),
]

handler400 = "claudesvc.views.bad_request"
handler404 = "claudesvc.views.not_found"
handler500 = "claudesvc.views.server_error"

from django.urls import path

from jobs.compat_api import views

app_name = "compat"

urlpatterns = [
    path("v1/chat/completions", views.ChatCompletionsView.as_view(), name="chat-completions"),
    path("v1/messages", views.MessagesView.as_view(), name="messages"),
    path("v1/messages/count_tokens", views.CountTokensView.as_view(), name="count-tokens"),
    path("v1/models", views.ModelListView.as_view(), name="models"),
    path("v1/models/<str:model>", views.ModelDetailView.as_view(), name="model"),
    path("v1/sessions", views.SessionListView.as_view(), name="sessions"),
    path("v1/sessions/<str:session_id>", views.SessionDetailView.as_view(), name="session"),
    path("api/rca", views.RcaView.as_view(), name="rca"),
    path("auth/login", views.LoginView.as_view(), name="login"),
]

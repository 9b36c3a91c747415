"""API keys: a public prefix to find the row, a secret stored only as a keyed hash."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ToolPolicy(models.TextChoices):
    """What the CLI may do in a job started with this key (see jobs.runner)."""

    READ_ONLY = "read_only", "Read only: read the job's own folder, write nothing"
    SAFE = "safe", "Safe: read the job's folder, write only its output folder"
    TRUSTED = "trusted", "Trusted: every tool, no permission checks (shell included)"


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
        help_text="Who this key is for; informational.",
    )
    tool_policy = models.CharField(max_length=20, choices=ToolPolicy.choices, default=ToolPolicy.SAFE)
    # Fair sharing and spend control (issue 12). Empty limits use the service defaults
    # (JOB_MAX_ACTIVE_PER_KEY, JOB_MAX_RUNNING_PER_KEY); empty budgets mean no budget.
    max_active_jobs = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most jobs pending + running at once; more is refused (429). Empty: the service default.",
    )
    max_running_jobs = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most jobs running at once; further jobs wait. Empty: the service default; 0: no cap.",
    )
    priority_across_keys = models.BooleanField(
        default=False,
        help_text="Let this key's job priority overtake other keys' jobs (otherwise it orders its own jobs only).",
    )
    budget_daily_usd = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Spend limit per UTC day in USD; jobs over it are refused and running ones capped.",
    )
    budget_monthly_usd = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Spend limit per UTC calendar month in USD.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (csk_live_{self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class RateLimitGroup(models.TextChoices):
    """Endpoint groups with a budget of their own (defaults: RATE_LIMIT_* settings)."""

    JOBS = "jobs", "Jobs API"
    COMPAT = "compat", "Compat API (OpenAI/Anthropic/RCA)"
    PROCESS_EXECUTE = "process_execute", "Process API: execute"
    PROCESS_STATUS = "process_status", "Process API: status, list, metrics"


class RateLimitOverride(models.Model):
    """A key's own limit for one group, replacing the service default."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="rate_limits")
    group = models.CharField(max_length=30, choices=RateLimitGroup.choices)
    requests = models.PositiveIntegerField(help_text="Requests allowed per window")
    window_seconds = models.PositiveIntegerField(help_text="Window length in seconds")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "group"], name="ratelimit_one_per_group")]

    def __str__(self) -> str:
        return f"{self.group}: {self.requests}/{self.window_seconds}s"


class KeySpend(ApiKey):
    """API keys seen by what they spent (the admin's "spend by key" page)."""

    class Meta:
        proxy = True
        verbose_name = "spend by key"
        verbose_name_plural = "spend by key"

"""``manage.py createapikey NAME``: create an API key and print its secret (last line)."""

from django.core.management.base import BaseCommand

from apikeys.models import ToolPolicy
from apikeys.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key. Its secret is printed once, as the last line, and never stored."

    def add_arguments(self, parser):
        parser.add_argument("name", help="A name that says whose key this is")
        parser.add_argument(
            "--tool-policy",
            choices=list(ToolPolicy.values),
            default="",
            help="What jobs of this key may do (default: JOB_TOOL_POLICY_DEFAULT)",
        )

    def handle(self, *args, name: str, tool_policy: str, **options):
        key, raw = api_key_create(name=name, tool_policy=tool_policy)
        self.stdout.write(
            f"Created API key {key.name!r} (prefix {key.prefix}, tool policy {key.tool_policy})."
        )
        self.stdout.write("Store the secret now; it cannot be shown again:")
        self.stdout.write(raw)

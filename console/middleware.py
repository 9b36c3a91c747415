"""The browser's language for the pages people read, English for the APIs."""

from __future__ import annotations

from django.conf import settings
from django.middleware.locale import LocaleMiddleware
from django.utils import translation

# Pages translated into every language of LANGUAGES: the landing page and the console.
PAGE_PREFIXES = ("/console/",)


def is_page(path: str) -> bool:
    return path == "/" or path.startswith(PAGE_PREFIXES)


class PageLocaleMiddleware(LocaleMiddleware):
    """Django's LocaleMiddleware (Accept-Language, else English) on the pages only.

    The APIs keep their English messages whatever a client's Accept-Language
    says: their clients were written against the seeds' texts, and DRF's own
    validation messages would otherwise arrive translated.
    """

    def process_request(self, request):
        if is_page(request.path_info):
            return super().process_request(request)
        translation.activate(settings.LANGUAGE_CODE)
        request.LANGUAGE_CODE = settings.LANGUAGE_CODE
        return None

    def process_response(self, request, response):
        if is_page(request.path_info):
            return super().process_response(request, response)
        return response

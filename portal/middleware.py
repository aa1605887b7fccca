"""Request checks that hold for every view, before any of them runs."""

from __future__ import annotations

from django.http import HttpResponseBadRequest

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class RefuseNulCharacters:
    """A NUL character is never part of a name, an id or a search in Haven, and PostgreSQL
    refuses it in any text it stores or compares (``DataError`` on every lookup), so a path,
    query string or form value holding one is answered 400 here rather than 500 wherever it
    reaches the database. Raw bodies (blobs, JSON) are the views' own to check."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        fields = [request.path, *_items(request.GET)]
        if request.method == "POST" and request.content_type in FORM_TYPES:
            # Read the body first so a view that reads it raw still can (parsing a multipart
            # body straight from the stream would consume it); the portal takes no uploads,
            # and Django refuses a body over DATA_UPLOAD_MAX_MEMORY_SIZE with a 400 here.
            request.body  # noqa: B018
            fields += _items(request.POST)
        if any("\x00" in field for field in fields):
            return HttpResponseBadRequest(
                "A value in this request contains a NUL character (\\0); remove it and try again."
            )
        return self.get_response(request)


def _items(query) -> list[str]:
    return [text for key, values in query.lists() for text in (key, *values)]

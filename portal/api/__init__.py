"""The REST API for people, ``/api/v1/`` (docs/api.md): Django REST framework views over the
same loaders (``portal.access``) and services the portal's pages use, authenticated by a
personal access token (``portal.tokens``) or the browser's session (with CSRF), described
by an OpenAPI 3 schema (drf-spectacular) at ``/api/v1/schema/``.

    auth         token and session authentication, the per-user rate limit
    errors       every refusal as JSON with field names (a service's ValidationError too)
    pagination   page-number pagination, the same envelope on every list
    serializers  what goes out, and the shape of what comes in
    views        one function per endpoint: load with the permission check, call a service
    urls         the routes, the schema and its interactive page
"""

"""Enrolled machines on the portal side (registration API, heartbeats, tokens) and, in
``agents/runtime/``, the code that runs on a machine (which never imports Django)."""

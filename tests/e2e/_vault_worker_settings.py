"""Settings for the portal worker the vault e2e test starts: the project's settings, with
the database pointed at the test database (``HAVEN_E2E_DB_NAME``) the live portal serves."""

import os

from portal.settings import *  # noqa: F403
from portal.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["HAVEN_E2E_DB_NAME"]
DATABASES["default"].pop("TEST", None)

#!/usr/bin/env python3
"""Django's command-line utility for Haven."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    from portal.env import SettingError

    try:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
    except SettingError as exc:
        sys.stderr.write(f"Haven cannot start: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Run the whole portal in the foreground: web server (ASGI), Celery worker and beat.

The web server is ``HAVEN_PORTAL_PROCESSES`` daphne processes sharing the port
(``portal.serve``: one with the embedded defaults, one per core with Redis).
Ctrl-C (or SIGTERM) stops them all and waits for them, so no process is left behind.
Each child runs in its own process group so that its own children (Celery's pool) are
stopped with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import BaseCommand, CommandError, call_command

from portal import serve
from portal.services import first_admin_create

STOP_GRACE_SECONDS = 15


class Command(BaseCommand):
    help = "Run Haven: the portal, its Celery worker and the beat scheduler, in the foreground."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default=os.environ.get("HAVEN_BIND", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=settings.HAVEN_PORT)
        parser.add_argument("--worker-concurrency", type=int, default=2)
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="also print each HTTP request, Celery's banners and each task run "
            "(by default only warnings and errors)",
        )
        parser.add_argument(
            "--web-processes",
            type=int,
            default=settings.HAVEN_PORTAL_PROCESSES,
            help="daphne processes serving the port (default: HAVEN_PORTAL_PROCESSES)",
        )

    def handle(self, *args, bind, port, worker_concurrency, web_processes, verbose, **options):
        if web_processes > 1 and not settings.REDIS_URL:
            raise CommandError("more than one web process needs REDIS_URL (docs/configuration.md)")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        password = first_admin_create()

        python = sys.executable
        # A newcomer reads the banner below, then nothing until something needs them: Celery's
        # start-up banners and a line per task (every few seconds, from beat) only with
        # --verbose. Warnings and errors always show.
        celery = [python, "-m", "celery", "-A", "portal", *([] if verbose else ["--quiet"])]
        log_level = "INFO" if verbose else "WARNING"
        commands = {
            "worker": [
                *celery,
                "worker",
                "-Q",
                "portal",
                "-n",
                "portal@%h",
                "-c",
                str(worker_concurrency),
                "--loglevel",
                log_level,
            ],
            "beat": [
                *celery,
                "beat",
                "--loglevel",
                log_level,
                "-s",
                settings.CELERY_BEAT_SCHEDULE_FILENAME,
            ],
        }
        env = {**os.environ, "HAVEN_INTERNAL_URL": f"http://127.0.0.1:{port}"}
        try:
            sock = serve.listening_socket(bind, port)
        except OSError as exc:
            raise CommandError(f"cannot listen on {bind}:{port}: {exc.strerror}") from exc
        web = serve.start_web(sock, max(1, web_processes), env=env, access_log=verbose)
        sock.close()  # the web processes hold it
        children = {f"web {n + 1}" if len(web) > 1 else "web": child for n, child in enumerate(web)}
        children.update(
            (name, subprocess.Popen(cmd, env=env, start_new_session=True))
            for name, cmd in commands.items()
        )

        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        self._banner(bind, port, password)
        exit_code = 0
        try:
            while not stopping:
                for name, child in children.items():
                    if child.poll() is not None:
                        self.stderr.write(
                            f"haven: the {name} process exited with code {child.returncode}; stopping."
                        )
                        exit_code = 1
                        stopping = True
                        break
                time.sleep(0.3)
        finally:
            self.stdout.write("\nhaven: stopping the portal, worker and scheduler…")
            _stop_all(children.values())
            self.stdout.write("haven: stopped.")
        sys.exit(exit_code)

    def _banner(self, bind, port, password):
        host = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
        lines = [
            "",
            "  Haven is running.",
            f"  Open {settings.HAVEN_PUBLIC_URL if bind != '127.0.0.1' else f'http://{host}:{port}'}/ in a browser.",
        ]
        if password:
            lines += [
                "  First sign-in: user name  admin",
                f"                 password   {password}",
                "  This password is shown only now. Change it after signing in (user menu › Change password).",
            ]
        else:
            lines.append("  Sign in with your account.")
        lines.append(f"  Data directory: {settings.DATA_DIR}")
        if os.geteuid() == 0:
            lines += [
                "  You are running Haven as root: fine for trying it out. For a lasting",
                "  installation run it as an ordinary user (docs/configuration.md, Running as root).",
            ]
        lines.append("  Press Ctrl-C to stop. (--verbose prints each request and task.)")
        lines.append("")
        self.stdout.write("\n".join(lines))


def _stop_all(children) -> None:
    children = [c for c in children if c.poll() is None]
    for child in children:
        # The leader only: Celery stops its own pool; the group is killed if it lingers.
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(max(0.1, deadline - time.monotonic()))
    for child in children:
        # Whatever is left in the group (a Celery pool process, say) goes too.
        _signal_group(child, signal.SIGKILL)
        if child.poll() is None:
            child.wait()


def _signal_group(child, signum) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)

"""``manage.py seed_import PATH``: import a seed disk on the portal's host, in this process,
with its progress printed; run it again after an interruption to copy only what is missing."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from agents.models import Machine
from jobs import services
from jobs.models import Job
from jobs.services import seeding


class Command(BaseCommand):
    help = "Import a seed written by haven-agent seed export into its machine's container."

    def add_arguments(self, parser):
        parser.add_argument("path", help="the seed folder (holding haven-seed.json)")

    def handle(self, *args, path: str, **options):
        folder = Path(path).absolute()
        if not folder.is_dir():
            raise CommandError(f"{folder} is not a folder")
        try:
            header = seeding.seed_header_read(folder)
        except services.SeedRefused as exc:
            raise CommandError(exc.message) from None
        machine = Machine.objects.select_related("vault").filter(pk=header["machine"]["id"]).first()
        if machine is None:
            raise CommandError(
                f"This seed is of machine {header['machine']['name']!r} in vault "
                f"{header['vault']['name']!r}, which this portal does not know."
            )
        try:
            job = seeding.seed_import_start(machine=machine, folder=folder, enqueue=False)
        except services.SeedRefused as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Importing the seed of {machine.name} (job {job.pk}) ...")
        try:
            job = seeding.seed_import_run(job=job)
        except seeding.ImportTakenOver:
            raise CommandError(
                f"Another run of this import took it over (job {job.pk}: Import pressed on the "
                "Seeding page, or seed_import run again) and carries it on; the job's page "
                "shows when it ends."
            ) from None
        if job.status != Job.Status.COMPLETED:
            raise CommandError(f"The import ended {job.get_status_display()}: {job.error}")
        self.stdout.write(
            f"Imported: {job.bytes_transferred} bytes copied; the recovery point is recorded."
        )

"""The endpoints. Each loads what it works on through ``portal.access`` (outsiders get 404,
too low a role 403) and writes only through the services the portal's pages call, with the
same activity log entries; lists take their filters from a serializer (a bad value is a 400
naming the parameter) and are paginated in a constant number of queries."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery, Value
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import generics, status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from agents.models import Machine
from jobs import selectors as job_selectors
from jobs import services as job_services
from jobs.models import Alert, BackupPolicy, Job
from jobs.recovery import services as recovery
from jobs.services import fleet
from portal import access
from portal import services as portal_services
from portal.api import serializers as s
from portal.api.errors import Conflict
from portal.models import Membership, PersonalAccessToken, ResourceGroup, Role, Subscription
from vaults import activity
from vaults import services as vault_services
from vaults.activity import Operation
from vaults.models import ActivityEntry, Vault


def _filters(request, serializer_class) -> dict:
    """The query string's filters, checked: a bad value is a 400 naming the parameter."""
    filters = serializer_class(data=request.query_params)
    filters.is_valid(raise_exception=True)
    return filters.validated_data


def _body(request, serializer_class) -> dict:
    body = serializer_class(data=request.data)
    body.is_valid(raise_exception=True)
    return body.validated_data


def _registered(user, machine_id, role=Role.READER) -> Machine:
    return access.get_for_user(
        user,
        Machine.objects.select_related("vault").filter(unregistered_at__isnull=True),
        role=role,
        pk=machine_id,
    )


# --- who am I ----------------------------------------------------------------------------
@extend_schema(responses=s.MeSerializer, tags=["account"])
@api_view(["GET"])
def me(request):
    """The user this request acts for, and how it authenticated."""
    token = request.auth if isinstance(request.auth, PersonalAccessToken) else None
    return Response(
        s.MeSerializer(
            {
                "username": request.user.username,
                "display_name": request.user.display_name,
                "is_administrator": request.user.is_superuser,
                "authenticated_by": "token" if token else "session",
                "token_expires_at": token.expires_at if token else None,
            }
        ).data
    )


# --- subscriptions and resource groups ------------------------------------------------------
def _subscriptions(user):
    qs = access.for_user(user, Subscription).order_by("name", "id")
    if user.is_superuser:
        return qs.annotate(role=Value(Role.OWNER))
    mine = Membership.objects.filter(user=user, subscription=OuterRef("pk")).values("role")[:1]
    return qs.annotate(role=Subquery(mine))


@extend_schema(tags=["subscriptions"])
class SubscriptionList(generics.ListAPIView):
    """The subscriptions you have a role on, with your role."""

    serializer_class = s.SubscriptionSerializer

    def get_queryset(self):
        return _subscriptions(self.request.user)


@extend_schema(tags=["subscriptions"])
class SubscriptionDetail(generics.RetrieveAPIView):
    serializer_class = s.SubscriptionSerializer

    def get_object(self):
        access.subscription_for_user(self.request.user, self.kwargs["subscription_id"])
        return _subscriptions(self.request.user).get(pk=self.kwargs["subscription_id"])


@extend_schema(tags=["resource groups"])
class ResourceGroupList(generics.ListCreateAPIView):
    """Resource groups you can see (``?subscription=`` for one subscription's); POST creates
    one (Contributor)."""

    serializer_class = s.ResourceGroupSerializer

    @extend_schema(parameters=[OpenApiParameter("subscription", OpenApiTypes.UUID)])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        qs = access.for_user(self.request.user, ResourceGroup).order_by("name", "id")
        subscription = _filters(self.request, _SubscriptionFilter).get("subscription")
        if subscription:
            qs = qs.filter(subscription_id=subscription)
        return qs

    @extend_schema(request=s.ResourceGroupWrite, responses={201: s.ResourceGroupSerializer})
    def post(self, request):
        data = _body(request, s.ResourceGroupWrite)
        subscription = access.subscription_for_user(
            request.user, data["subscription"], role=Role.CONTRIBUTOR
        )
        if data["location"] not in settings.HAVEN_REGIONS:
            return Response({"location": ["Choose one of the regions."]}, status=400)
        group = portal_services.resource_group_create(
            subscription=subscription, name=data["name"], location=data["location"], by=request.user
        )
        return Response(s.ResourceGroupSerializer(group).data, status=status.HTTP_201_CREATED)


class _SubscriptionFilter(s.serializers.Serializer):
    subscription = s.serializers.UUIDField(required=False)


@extend_schema(tags=["resource groups"])
class ResourceGroupDetail(generics.RetrieveAPIView):
    serializer_class = s.ResourceGroupSerializer

    def get_object(self):
        return access.get_for_user(self.request.user, ResourceGroup, pk=self.kwargs["group_id"])


# --- vaults -----------------------------------------------------------------------------
class _VaultFilter(s.serializers.Serializer):
    subscription = s.serializers.UUIDField(required=False)
    resource_group = s.serializers.IntegerField(required=False)


@extend_schema(tags=["vaults"])
class VaultList(generics.ListCreateAPIView):
    """Vaults you can see; POST creates one (Contributor on the subscription) and starts its
    deployment: the vault is ``deploying`` until its storage is ready."""

    serializer_class = s.VaultSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("subscription", OpenApiTypes.UUID),
            OpenApiParameter("resource_group", OpenApiTypes.INT),
        ]
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        qs = (
            access.for_user(self.request.user, Vault)
            .select_related("resource_group")
            .order_by("name", "id")
        )
        filters = _filters(self.request, _VaultFilter)
        if "subscription" in filters:
            qs = qs.filter(subscription_id=filters["subscription"])
        if "resource_group" in filters:
            qs = qs.filter(resource_group_id=filters["resource_group"])
        return qs

    @extend_schema(request=s.VaultWrite, responses={201: s.VaultSerializer})
    def post(self, request):
        data = _body(request, s.VaultWrite)
        subscription = access.subscription_for_user(
            request.user, data["subscription"], role=Role.CONTRIBUTOR
        )
        group = None
        if data["resource_group"] is not None:
            group = ResourceGroup.objects.filter(
                subscription=subscription, pk=data["resource_group"]
            ).first()
            if group is None:
                return Response(
                    {"resource_group": ["That resource group is not in the chosen subscription."]},
                    status=400,
                )
        vault = vault_services.vault_create(
            subscription=subscription,
            resource_group=group,
            new_resource_group_name="" if group else data["new_resource_group"],
            name=data["name"],
            location=data["location"],
            tags=data["tags"],
            created_by=request.user,
        )
        vault = Vault.objects.select_related("resource_group").get(pk=vault.pk)
        return Response(s.VaultSerializer(vault).data, status=status.HTTP_201_CREATED)


def _vault(request, vault_id, role=Role.READER) -> Vault:
    return access.get_for_user(
        request.user, Vault.objects.select_related("resource_group"), role=role, pk=vault_id
    )


@extend_schema(tags=["vaults"])
class VaultDetail(generics.RetrieveAPIView):
    serializer_class = s.VaultSerializer

    def get_object(self):
        return _vault(self.request, self.kwargs["vault_id"])


@extend_schema(tags=["vaults"], request=s.RedundancyWrite, responses={200: s.VaultSerializer})
@api_view(["PUT"])
def vault_redundancy(request, vault_id):
    """Change the storage redundancy (Contributor), allowed until the first backup, as on
    Properties › Backup configuration."""
    vault = _vault(request, vault_id)
    activity.require_role(
        request, vault=vault, role=Role.CONTRIBUTOR, operation=Operation.REDUNDANCY_CHANGE
    )
    data = _body(request, s.RedundancyWrite)
    vault_services.vault_redundancy_set(
        vault=vault, redundancy=data["redundancy"], user=request.user
    )
    return Response(s.VaultSerializer(_vault(request, vault_id)).data)


# --- machines, policies, Back up now, recovery points, restore --------------------------------
class _MachineFilter(s.serializers.Serializer):
    vault = s.serializers.UUIDField(required=False)
    registered = s.serializers.BooleanField(required=False, allow_null=True, default=None)


@extend_schema(
    tags=["machines"],
    parameters=[
        OpenApiParameter("vault", OpenApiTypes.UUID),
        OpenApiParameter("registered", OpenApiTypes.BOOL),
    ],
)
class MachineList(generics.ListAPIView):
    """Machines you can see, registered and gone (their data stays a restore source)."""

    serializer_class = s.MachineSerializer

    def get_queryset(self):
        qs = (
            access.for_user(self.request.user, Machine)
            .select_related("backup_policy")
            .order_by("name", "id")
        )
        filters = _filters(self.request, _MachineFilter)
        if "vault" in filters:
            qs = qs.filter(vault_id=filters["vault"])
        if filters.get("registered") is not None:
            qs = qs.filter(unregistered_at__isnull=filters["registered"])
        return qs


@extend_schema(tags=["machines"])
class MachineDetail(generics.RetrieveAPIView):
    serializer_class = s.MachineSerializer

    def get_object(self):
        return access.get_for_user(
            self.request.user,
            Machine.objects.select_related("backup_policy"),
            pk=self.kwargs["machine_id"],
        )


@extend_schema(tags=["policies"], methods=["GET"], responses=s.PolicySerializer)
@extend_schema(
    tags=["policies"], methods=["PUT"], request=s.PolicyWrite, responses=s.PolicySerializer
)
@api_view(["GET", "PUT"])
def machine_policy(request, machine_id):
    """A machine's backup policy. PUT replaces it (Contributor) under the editor's rules,
    answered with the editor's field names and words; network throttling is kept as set on
    the Throttling page."""
    machine = _registered(request.user, machine_id)
    if request.method == "PUT":
        activity.require_role(
            request,
            vault=machine.vault,
            role=Role.CONTRIBUTOR,
            operation=Operation.POLICY_CHANGE,
            resource=activity.Resource(kind="backup policy", id=str(machine.pk), name=machine.name),
        )
        data = _body(request, s.PolicyWrite)
        job_services.policy_save(
            machine=machine,
            spec=_plain(data["spec"]),
            user=request.user,
            pin=data["security_pin"],
        )
    policy = BackupPolicy.objects.select_related("machine").filter(machine=machine).first()
    if policy is None:
        return Response(
            {"detail": f"{machine.name} has no backup policy yet; PUT one to create it."},
            status=404,
        )
    return Response(s.PolicySerializer(policy).data)


def _plain(value):
    """Serializer output (OrderedDicts) as the plain dicts and lists a spec is made of."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@extend_schema(tags=["jobs"], request=s.BackupNowWrite, responses={202: s.JobSerializer})
@api_view(["POST"])
def backup_now(request, machine_id):
    """Back up now (Backup Operator): an ad hoc backup, kept by the policy's retention or
    until ``retain_until``. 409 while one runs, when protection is stopped, or before the
    first (offline) seed is imported."""
    machine = _registered(request.user, machine_id)
    activity.require_role(
        request,
        vault=machine.vault,
        role=Role.BACKUP_OPERATOR,
        operation=Operation.BACKUP_NOW,
        resource=machine,
    )
    data = _body(request, s.BackupNowWrite)
    if not BackupPolicy.objects.filter(machine=machine).exists():
        raise Conflict(f"{machine.name} has no backup policy yet: set one first.")
    try:
        job = job_services.backup_start(
            machine=machine, user=request.user, retain_until=data["retain_until"]
        )
    except job_services.BackupAlreadyRunning as exc:
        raise Conflict(f"{exc} Its job: {exc.job.pk}." if exc.job else str(exc)) from None
    except (job_services.ProtectionStopped, job_services.SeedPending) as exc:
        raise Conflict(str(exc)) from None
    job = Job.objects.select_related("machine", "vault").get(pk=job.pk)
    return Response(s.JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["recovery"])
class RecoveryPointList(generics.ListAPIView):
    """A machine's kept recovery points, newest first (a gone machine's too)."""

    serializer_class = s.RecoveryPointSerializer

    def get_queryset(self):
        machine = access.get_for_user(self.request.user, Machine, pk=self.kwargs["machine_id"])
        return job_selectors.live_points(machine).order_by("-created_at", "-id")


@extend_schema(tags=["recovery"], request=s.RestoreWrite, responses={202: s.JobSerializer})
@api_view(["POST"])
def restore_start(request, machine_id):
    """Restore files of this machine's backup (Backup Operator), onto itself or onto
    ``target``, another registered machine of the same vault."""
    data = _body(request, s.RestoreWrite)
    target_id = data["target"] or machine_id
    try:
        source, target = recovery.pair_for_user(request.user, machine_id, target_id)
    except (PermissionDenied, recovery.RecoveryRefused) as exc:
        # As the wizard: the refusal is kept in the log of the vault the person can see
        # (an outsider got 404 above and leaves no entry).
        seen = recovery.source_for_user(request.user, machine_id, role=Role.READER)
        activity.record(
            operation=Operation.RESTORE_START,
            request=request,
            vault=seen.vault,
            resource=seen,
            outcome=activity.Outcome.REFUSED,
            reason=str(exc),
        )
        if isinstance(exc, PermissionDenied):
            raise
        raise Conflict(str(exc)) from None
    try:
        job = recovery.restore_start(
            user=request.user,
            source=source,
            target=target,
            recovery_point=data["recovery_point"],
            paths=data["paths"],
            folder=data["folder"],
            on_conflict=data["on_conflict"],
            restore_permissions=data["restore_permissions"],
            region=data["region"],
        )
    except recovery.SourceNotAuthorised as exc:
        return Response({"detail": str(exc)}, status=exc.status)
    except recovery.RecoveryRefused as exc:
        return Response({"detail": str(exc)}, status=400)
    job = Job.objects.select_related("machine", "vault").get(pk=job.pk)
    return Response(s.JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


# --- jobs -------------------------------------------------------------------------------------
@extend_schema(tags=["jobs"], parameters=[s.JobFilters])
class JobList(generics.ListAPIView):
    """Jobs you can see, newest first, filtered by status, operation, machine, vault and
    creation time."""

    serializer_class = s.JobSerializer

    def get_queryset(self):
        filters = _filters(self.request, s.JobFilters)
        qs = access.for_user(self.request.user, Job).select_related("machine", "vault")
        for name in ("status", "operation"):
            if name in filters:
                qs = qs.filter(**{name: filters[name]})
        for name in ("machine", "vault"):
            if name in filters:
                qs = qs.filter(**{f"{name}_id": filters[name]})
        if "created_after" in filters:
            qs = qs.filter(created_at__gte=filters["created_after"])
        if "created_before" in filters:
            qs = qs.filter(created_at__lt=filters["created_before"])
        return qs.order_by("-created_at", "-id")


def _job(request, job_id, role=Role.READER) -> Job:
    return access.get_for_user(
        request.user, Job.objects.select_related("machine", "vault"), role=role, pk=job_id
    )


def _job_detail(job: Job) -> dict:
    job = job_selectors.with_live_progress([job])[0]
    job.live = job.progress or {}
    return s.JobDetailSerializer(job).data


@extend_schema(tags=["jobs"], responses=s.JobDetailSerializer)
@api_view(["GET"])
def job_detail(request, job_id):
    """A job, with its latest progress (as the job page shows it live)."""
    return Response(_job_detail(_job(request, job_id)))


@extend_schema(tags=["jobs"], request=None, responses=s.JobDetailSerializer)
@api_view(["POST"])
def job_cancel(request, job_id):
    """Cancel (Backup Operator): a job not started ends at once; a running one is asked to
    stop and ends when its agent confirms."""
    job = _job(request, job_id, role=Role.BACKUP_OPERATOR)
    try:
        job = job_services.job_cancel(job=job, user=request.user)
    except job_services.JobNotCancellable as exc:
        raise Conflict(str(exc)) from None
    return Response(_job_detail(job))


# --- alerts and the activity log ----------------------------------------------------------------
@extend_schema(tags=["alerts"], parameters=[s.AlertFilters])
class AlertList(generics.ListAPIView):
    """Backup alerts of the vaults you can see; ``state`` active (default), resolved or all."""

    serializer_class = s.AlertSerializer

    def get_queryset(self):
        filters = _filters(self.request, s.AlertFilters)
        qs = access.for_user(self.request.user, Alert).select_related(
            "vault", "machine", "acknowledged_by", "closed_by"
        )
        if "vault" in filters:
            qs = qs.filter(vault_id=filters["vault"])
        if filters["state"] == "active":
            qs = qs.filter(resolved_at__isnull=True)
        elif filters["state"] == "resolved":
            qs = qs.filter(resolved_at__isnull=False)
        return qs.order_by("-last_raised_at", "-id")


def _alert_for_action(request, alert_id, operation: str) -> Alert:
    """The alert, for a Backup Operator or higher on its vault (as the Backup center's
    buttons): an outsider gets 404, a Reader 403, logged as refused."""
    alert = access.get_for_user(
        request.user, Alert.objects.select_related("vault", "machine"), pk=alert_id
    )
    fleet.require_alert_action(request, alert, operation)
    return alert


def _alert_data(alert: Alert) -> dict:
    alert = Alert.objects.select_related("vault", "machine", "acknowledged_by", "closed_by").get(
        pk=alert.pk
    )
    return s.AlertSerializer(alert).data


@extend_schema(tags=["alerts"], request=None, responses=s.AlertSerializer)
@api_view(["POST"])
def alert_acknowledge(request, alert_id):
    """Acknowledge (Backup Operator): you are on it. The alert stays open, and stays
    acknowledged if raised again, until its condition clears or someone closes it; who and
    when are kept. Acknowledging twice changes nothing; a closed alert is a 409."""
    alert = _alert_for_action(request, alert_id, Operation.ALERT_ACKNOWLEDGE)
    try:
        fleet.alert_acknowledge(alert=alert, user=request.user)
    except fleet.AlertClosed as exc:
        raise Conflict(str(exc)) from None
    return Response(_alert_data(alert))


@extend_schema(tags=["alerts"], request=None, responses=s.AlertSerializer)
@api_view(["POST"])
def alert_close(request, alert_id):
    """Close (Backup Operator): the alert leaves the open list; Closed is final, and if its
    condition comes back a new alert is raised. An alert already closed is a 409."""
    alert = _alert_for_action(request, alert_id, Operation.ALERT_CLOSE)
    if not fleet.alert_close(alert=alert, user=request.user):
        alert.refresh_from_db()
        closer = alert.closed_by.get_username() if alert.closed_by_id else None
        how = f"by {closer}" if closer else "by the portal: its condition cleared"
        raise Conflict(
            f"This alert is already closed ({how}); closed is final, and if the condition "
            "comes back a new alert is raised."
        )
    return Response(_alert_data(alert))


@extend_schema(tags=["activity"], parameters=[s.ActivityFilters])
class ActivityList(generics.ListAPIView):
    """The activity log of the subscriptions you can see (a deleted vault's entries too),
    newest first."""

    serializer_class = s.ActivitySerializer

    def get_queryset(self):
        filters = _filters(self.request, s.ActivityFilters)
        qs = access.for_user(self.request.user, ActivityEntry, subscription_path="subscription")
        if "subscription" in filters:
            qs = qs.filter(subscription_id=filters["subscription"])
        if "vault" in filters:
            qs = qs.filter(vault_id=filters["vault"])
        for name in ("operation", "outcome"):
            if name in filters:
                qs = qs.filter(**{name: filters[name]})
        return qs.order_by("-at", "-id")


# --- the schema ---------------------------------------------------------------------------------
class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, generated once per process: it depends on the code alone, and
    generating it takes a good part of a second that every visit to the docs page would pay."""

    _generated: dict | None = None

    def _get_schema_response(self, request):
        if SchemaView._generated is None:
            generator = self.generator_class(urlconf=self.urlconf, patterns=self.patterns)
            SchemaView._generated = generator.get_schema(request=request, public=True)
        filename = self._get_filename(request, None)
        return Response(
            data=SchemaView._generated,
            headers={"Content-Disposition": f'inline; filename="{filename}"'},
        )

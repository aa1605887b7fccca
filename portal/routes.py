from django.urls import path

from portal.views import accounts, auth, home, notifications, resource_groups, subscriptions

app_name = "portal"

urlpatterns = [
    path("", home.home, name="home"),
    path("signin/", auth.signin, name="login"),
    path("signin/code/", auth.signin_code, name="signin-code"),
    path("signout/", auth.signout, name="logout"),
    path("account/two-factor/", accounts.two_factor_page, name="two-factor"),
    path("account/password/", accounts.password_change, name="password-change"),
    path("account/tokens/", accounts.token_list, name="tokens"),
    path("account/tokens/<int:token_id>/revoke/", accounts.token_revoke, name="token-revoke"),
    path("resources/", home.resources, name="resources"),
    path("search/", home.search_view, name="search"),
    path("notifications/", notifications.notification_list, name="notifications"),
    path("notifications/bell/", notifications.bell, name="bell"),
    path("notifications/read/", notifications.mark_all_read, name="notifications-read"),
    path("subscriptions/", subscriptions.subscription_list, name="subscriptions"),
    path("subscriptions/create/", subscriptions.subscription_create, name="subscription-create"),
    path(
        "subscriptions/<uuid:subscription_id>/",
        subscriptions.subscription_detail,
        name="subscription",
    ),
    path(
        "subscriptions/<uuid:subscription_id>/rename/",
        subscriptions.subscription_rename,
        name="subscription-rename",
    ),
    path(
        "subscriptions/<uuid:subscription_id>/delete/",
        subscriptions.subscription_delete,
        name="subscription-delete",
    ),
    path(
        "subscriptions/<uuid:subscription_id>/access/",
        subscriptions.subscription_access,
        name="subscription-access",
    ),
    path(
        "subscriptions/<uuid:subscription_id>/access/two-factor/",
        subscriptions.subscription_two_factor,
        name="subscription-two-factor",
    ),
    path(
        "subscriptions/<uuid:subscription_id>/access/<int:membership_id>/role/",
        subscriptions.membership_role,
        name="membership-role",
    ),
    path(
        "subscriptions/<uuid:subscription_id>/access/<int:membership_id>/remove/",
        subscriptions.membership_remove,
        name="membership-remove",
    ),
    path("resource-groups/", resource_groups.resource_group_list, name="resource-groups"),
    path(
        "resource-groups/create/",
        resource_groups.resource_group_create,
        name="resource-group-create",
    ),
    path(
        "resource-groups/<int:group_id>/",
        resource_groups.resource_group_detail,
        name="resource-group",
    ),
    path(
        "resource-groups/<int:group_id>/rename/",
        resource_groups.resource_group_rename,
        name="resource-group-rename",
    ),
    path(
        "resource-groups/<int:group_id>/delete/",
        resource_groups.resource_group_delete,
        name="resource-group-delete",
    ),
    path("users/", accounts.user_list, name="users"),
    path("users/create/", accounts.user_create, name="user-create"),
    path("users/sign-in-activity/", accounts.signin_activity, name="signin-activity"),
    path("users/<int:user_id>/deactivate/", accounts.user_deactivate, name="user-deactivate"),
    path("users/<int:user_id>/activate/", accounts.user_activate, name="user-activate"),
    path(
        "users/<int:user_id>/reset-two-factor/",
        accounts.user_reset_two_factor,
        name="user-reset-two-factor",
    ),
    path(
        "users/<int:user_id>/reset-password/",
        accounts.user_reset_password,
        name="user-reset-password",
    ),
]

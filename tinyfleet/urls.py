from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from tinyfleet_agent.protocol import DEVICE_API_PREFIX

from accounts import views as account_views
from compression import chain_views, sensor_views
from compression import views as registry_views
from fleet import agent_dist
from fleet import pages as fleet_pages
from fleet import views as fleet_views
from fleet.alerts import views as alert_views
from fleet.api.device_api import device_api
from tinyfleet.api import api
from tinyfleet.views import healthz, home

urlpatterns = [
    path("", home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("agent/<str:filename>", agent_dist.agent_wheel, name="agent-wheel"),
    path("api/v1/", api.urls),
    path(DEVICE_API_PREFIX.removeprefix("/") + "/", device_api.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("models/", registry_views.model_list, name="models"),
    path("models/upload/", registry_views.upload, name="upload"),
    path("sensors/", sensor_views.sensor_models, name="sensor-models"),
    path("models/<int:model_id>/", registry_views.model_detail, name="model-detail"),
    path("versions/<int:version_id>/", registry_views.version_detail, name="version-detail"),
    path("versions/<int:version_id>/delete/", registry_views.version_delete, name="version-delete"),
    path(
        "versions/<int:version_id>/tokenizer/",
        registry_views.version_tokenizer,
        name="version-tokenizer",
    ),
    path(
        "versions/<int:version_id>/primary-output/",
        registry_views.version_primary_output,
        name="version-primary-output",
    ),
    path("models/<int:model_id>/compare/", registry_views.model_compare, name="model-compare"),
    path("versions/<int:version_id>/jobs/", registry_views.job_start, name="job-start"),
    path("jobs/", registry_views.job_list, name="jobs"),
    path("datasets/", registry_views.dataset_list, name="datasets"),
    path("datasets/<int:dataset_id>/", registry_views.dataset_detail, name="dataset-detail"),
    path("versions/<int:version_id>/chain/", chain_views.chain_start, name="chain-start"),
    path("chains/", chain_views.chain_list, name="chains"),
    path("chains/<int:chain_id>/", chain_views.chain_detail, name="chain-detail"),
    path("chains/<int:chain_id>/cancel/", chain_views.chain_cancel, name="chain-cancel"),
    path("jobs/<int:job_id>/", registry_views.job_detail, name="job-detail"),
    path("jobs/<int:job_id>/cancel/", registry_views.job_cancel, name="job-cancel"),
    path("versions/<int:version_id>/publish/", fleet_views.version_publish, name="version-publish"),
    path("bundles/", fleet_views.bundle_list, name="bundles"),
    path("bundles/<str:bundle_id>/", fleet_views.bundle_detail, name="bundle-detail"),
    path("security/", fleet_views.security, name="security"),
    path("fleet/", fleet_pages.overview, name="fleet"),
    path("fleet/alerts/", alert_views.alerts_page, name="alerts"),
    path("devices/", fleet_pages.device_list, name="devices"),
    path("devices/<uuid:device_id>/", fleet_pages.device_detail, name="device-detail"),
    path("devices/<uuid:device_id>/revoke/", fleet_pages.device_revoke, name="device-revoke"),
    path("groups/", fleet_pages.group_list, name="groups"),
    path("rollouts/", fleet_pages.rollout_list, name="rollouts"),
    path("rollouts/new/", fleet_pages.rollout_create, name="rollout-create"),
    path("rollouts/preview/", fleet_pages.rollout_preview, name="rollout-preview"),
    path("rollouts/<int:rollout_id>/", fleet_pages.rollout_detail, name="rollout-detail"),
    path(
        "rollouts/<int:rollout_id>/<str:action>/", fleet_pages.rollout_action, name="rollout-action"
    ),
    path("bundles/<str:bundle_id>/monitor/", fleet_pages.bundle_monitor, name="bundle-monitor"),
    path("metrics", fleet_pages.prometheus, name="prometheus"),
    path("tokens/", account_views.token_list, name="tokens"),
    path("tokens/<int:token_id>/revoke/", account_views.token_revoke, name="token-revoke"),
    path("audit/", account_views.audit_log, name="audit"),
    path("admin/", admin.site.urls),
]

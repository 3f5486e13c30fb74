from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.ops import health, pages
from apps.orders.urls import product_urlpatterns

api_patterns: list[URLPattern | URLResolver] = [
    path("auth/", include("apps.accounts.urls")),
    path("ops/", include("apps.ops.urls")),
    path("coupons/", include("apps.coupons.urls")),
    path("wallets/", include("apps.wallets.urls")),
    path("products/", include(product_urlpatterns)),
    path("orders/", include("apps.orders.urls")),
    path("notifications/", include("apps.notifications.urls")),
    path("emails/", include("apps.emails.urls")),
    path("chat/", include("apps.chat.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns: list[URLPattern | URLResolver] = [
    path("", pages.home, name="home"),
    path("accounts/", include("apps.accounts.page_urls")),
    path("emails/", include("apps.emails.page_urls")),
    path("notifications/", include("apps.notifications.pages")),
    path("chat/", include("apps.chat.pages")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", include(api_patterns)),
]

# The lab's baselines and counter-examples (apps/lab), for the bench stack only. Included
# by name, so with the lab off its modules are never even imported.
if settings.LAB_ENABLED:
    urlpatterns.append(path("", include("apps.lab.urls")))

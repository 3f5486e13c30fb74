from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.ops import api as ops_api
from apps.ops import health, pages
from apps.ops.urls import bench_api_urlpatterns
from apps.orders.urls import product_urlpatterns

api_patterns: list[URLPattern | URLResolver] = [
    path("auth/", include("apps.accounts.urls")),
    path("ops/", include("apps.ops.urls")),
    path("coupons/", include("apps.coupons.urls")),
    path("wallets/", include("apps.wallets.urls")),
    path("products/", include(product_urlpatterns)),
    path("orders/", include("apps.orders.urls")),
    path("bench/", include(bench_api_urlpatterns)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("", pages.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("bench/noop/", ops_api.plain_noop),
    path("admin/", admin.site.urls),
    path("api/", include(api_patterns)),
]

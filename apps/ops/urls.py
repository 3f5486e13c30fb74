from django.conf import settings
from django.urls import URLPattern, path

from apps.coupons.naive import GateOnlyIssueView, NaiveIssueView
from apps.orders.synchronous import SynchronousCheckoutView

from . import api

urlpatterns = [
    path("pings/", api.PingListCreateView.as_view(), name="ops-pings"),
    path("pings/<int:ping_id>/", api.PingDetailView.as_view(), name="ops-ping"),
]

bench_api_urlpatterns: list[URLPattern] = [
    path("noop/", api.AnonymousNoopView.as_view()),
    path("noop-auth/", api.AuthenticatedNoopView.as_view()),
    path("noop-stock-auth/", api.StockTokenAuthNoopView.as_view()),
    path("one-query/", api.OneQueryView.as_view()),
]

# Bench-only variants that write (a naive coupon issue, the gate-only ablation, a
# synchronous checkout): routed only when BENCH_WRITE_ENDPOINTS is on (bench/stack.py
# turns it on), never by default.
if settings.BENCH_WRITE_ENDPOINTS:
    bench_api_urlpatterns += [
        path("coupons/<int:campaign_id>/naive-issue/", NaiveIssueView.as_view()),
        path("coupons/<int:campaign_id>/gate-only-issue/", GateOnlyIssueView.as_view()),
        path("orders/synchronous/", SynchronousCheckoutView.as_view()),
    ]
